"""Training configuration: nested dataclasses read from a YAML or JSON file plus ``section.key=value`` overrides.

Defaults are the V-PETL README HMDB51 recipe (bruceyo/V-PETL@661198dd38:README.md, main.py defaults):
Video Swin-B, drop path 0.4, V-PETL head, recipe ``adaptformer-64+patt-kv-128`` (PATT scale 0.8), 8 frames every
2nd frame, batch 16, 70 epochs, 10 warm-up epochs, blr 0.1 (lr = blr * batch * world_size / 256), SGD momentum 0.9,
weight decay 0, AMP on CUDA, 4 clips x 3 crops at test time.

    video-swin-vpetl train --config hmdb51.yaml data.root=/data/hmdb51 optim.epochs=30 method.recipe=patt-kv-128

Every unknown key, wrong type or invalid value raises :class:`ConfigError` naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peft_core.runtime import config as runtime_config
from peft_core.runtime.config import (
    ConfigError,
    ConfigRoot,
    RunSection,
    apply_overrides,
    check_choices,
    check_positive,
    dump_yaml,
)

__all__ = ["ConfigError", "TrainConfig", "apply_overrides", "dump_yaml", "from_dict", "load_config"]


@dataclass
class ModelConfig:
    arch: str = "video-swin-b"
    pretrained: str | None = None
    load_head: bool = False
    head: str = "vpetl"
    num_classes: int | None = None
    drop_path_rate: float = 0.4
    head_dropout: float | None = None
    grad_checkpointing: bool = False
    overrides: dict = field(default_factory=dict)


@dataclass
class MethodConfig:
    recipe: str = "adaptformer-64+patt-kv-128"
    patt_scale: float = 0.8
    patt_init: str = "upstream"
    adapter_scale: float = 0.1
    adapter_init: str = "lora"
    prefix_reparam: bool = False
    prefix_mid_dim: int = 64
    lora_alpha: float | None = None


@dataclass
class DataConfig:
    dataset: str = "hmdb51"
    root: str = "data/hmdb51"
    train_list: str = "train.csv"
    val_list: str = "val.csv"
    test_list: str = "test.csv"
    video_root: str | None = None
    num_frames: int = 8
    sampling_rate: int = 2
    input_size: int = 224
    train_short_side: int = 256
    test_clips: int = 4
    test_crops: int = 3
    backend: str = "pyav"
    num_workers: int = 4


@dataclass
class OptimConfig:
    batch_size: int = 16
    epochs: int = 70
    warmup_epochs: float = 10.0
    blr: float = 0.1
    lr: float | None = None
    min_lr: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 0.0


@dataclass
class RunConfig(RunSection):
    """The shared keys (:class:`peft_core.runtime.config.RunSection`) and the evaluation batch size."""

    output_dir: str = "runs/v_petl"
    eval_batch_size: int = 2


@dataclass
class TrainConfig(ConfigRoot):
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> None:
        """Check values (types are checked when the config is built)."""
        check_positive({
            "data.num_frames": self.data.num_frames, "data.sampling_rate": self.data.sampling_rate,
            "data.input_size": self.data.input_size, "data.train_short_side": self.data.train_short_side,
            "data.test_clips": self.data.test_clips, "data.test_crops": self.data.test_crops,
            "optim.batch_size": self.optim.batch_size, "optim.epochs": self.optim.epochs,
            "run.eval_every": self.run.eval_every, "run.eval_batch_size": self.run.eval_batch_size,
        })
        check_positive({"optim.blr": self.optim.blr, "optim.min_lr": self.optim.min_lr,
                        "optim.weight_decay": self.optim.weight_decay, "data.num_workers": self.data.num_workers,
                        "optim.warmup_epochs": self.optim.warmup_epochs}, strict=False)
        if self.data.train_short_side < self.data.input_size:
            raise ConfigError(f"data.train_short_side={self.data.train_short_side} is smaller than data.input_size="
                              f"{self.data.input_size}; expected >= input_size")
        check_choices({"model.head": (self.model.head, ("vpetl", "i3d")),
                       "data.backend": (self.data.backend, ("auto", "pyav", "decord")),
                       "method.patt_init": (self.method.patt_init, ("upstream", "zero_up")),
                       "method.adapter_init": (self.method.adapter_init, ("lora", "zero_up", "bert"))})
        self.run.check()


def from_dict(data: dict[str, Any], source: str = "config") -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from nested dicts; unknown sections or keys are errors."""
    return runtime_config.from_dict(TrainConfig, data, source)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults, then the file (if any), then the overrides."""
    return runtime_config.load_config(TrainConfig, path, overrides)
