"""Training configuration: nested dataclasses read from a YAML or JSON file plus ``section.key=value`` overrides.

Defaults are the V-PETL README HMDB51 recipe (bruceyo/V-PETL@661198dd38:README.md, main.py defaults):
Video Swin-B, drop path 0.4, V-PETL head, recipe ``adaptformer-64+patt-kv-128`` (PATT scale 0.8), 8 frames every
2nd frame, batch 16, 70 epochs, 10 warm-up epochs, blr 0.1 (lr = blr * batch * world_size / 256), SGD momentum 0.9,
weight decay 0, AMP on CUDA, 4 clips x 3 crops at test time.

    video-swin-vpetl train --config hmdb51.yaml data.root=/data/hmdb51 optim.epochs=30 method.recipe=patt-kv-128

Every unknown key, wrong type or invalid value raises :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """An invalid configuration (the message names the file and the key)."""


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
class RunConfig:
    output_dir: str = "runs/v_petl"
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    resume: str = "auto"
    stop_after: int | None = None
    eval_every: int = 1
    eval_batch_size: int = 2
    eval_before: bool = False
    final_test: bool = True
    progress: bool = True


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Check values (types are checked when the config is built)."""
        positive = {
            "data.num_frames": self.data.num_frames, "data.sampling_rate": self.data.sampling_rate,
            "data.input_size": self.data.input_size, "data.train_short_side": self.data.train_short_side,
            "data.test_clips": self.data.test_clips, "data.test_crops": self.data.test_crops,
            "optim.batch_size": self.optim.batch_size, "optim.epochs": self.optim.epochs,
            "run.eval_every": self.run.eval_every, "run.eval_batch_size": self.run.eval_batch_size,
        }
        for key, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{key}={value!r} is not allowed; expected a number > 0")
        for key, value in {"optim.blr": self.optim.blr, "optim.min_lr": self.optim.min_lr,
                           "optim.weight_decay": self.optim.weight_decay, "data.num_workers": self.data.num_workers,
                           "optim.warmup_epochs": self.optim.warmup_epochs}.items():
            if value < 0:
                raise ConfigError(f"{key}={value!r} is not allowed; expected a number >= 0")
        if self.data.train_short_side < self.data.input_size:
            raise ConfigError(f"data.train_short_side={self.data.train_short_side} is smaller than data.input_size="
                              f"{self.data.input_size}; expected >= input_size")
        if self.run.resume not in ("auto", "none") and not Path(self.run.resume).is_file():
            raise ConfigError(f"run.resume={self.run.resume!r}: expected 'auto', 'none' or an existing "
                              "checkpoint file")
        choices = {"model.head": (self.model.head, ("vpetl", "i3d")),
                   "data.backend": (self.data.backend, ("auto", "pyav", "decord")),
                   "method.patt_init": (self.method.patt_init, ("upstream", "zero_up")),
                   "method.adapter_init": (self.method.adapter_init, ("lora", "zero_up", "bert"))}
        for key, (value, allowed) in choices.items():
            if value not in allowed:
                raise ConfigError(f"{key}={value!r} is not allowed; expected one of {list(allowed)}")
        if self.run.device not in ("auto", "cpu") and not self.run.device.startswith("cuda"):
            raise ConfigError(f"run.device={self.run.device!r} is not allowed; expected 'auto', 'cpu' or 'cuda[:N]'")


_SECTION_TYPES = {"model": ModelConfig, "method": MethodConfig, "data": DataConfig, "optim": OptimConfig,
                  "run": RunConfig}


def _coerce(key: str, value: Any, annotation: Any, source: str) -> Any:
    """Check ``value`` against a field annotation (``int``, ``float | None``, ``dict``, ...); ints pass as floats."""
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"{source}: {key}=None is not allowed; expected {annotation}")
    for option in options:
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if option is str and isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        if option is dict and isinstance(value, dict):
            return value
    raise ConfigError(f"{source}: {key}={value!r} ({type(value).__name__}) is not allowed; expected {annotation}")


def from_dict(data: dict[str, Any], source: str = "config") -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from nested dicts; unknown sections or keys are errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections {sorted(_SECTION_TYPES)}, "
                          f"got {type(data).__name__}")
    unknown = sorted(set(data) - set(_SECTION_TYPES))
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {unknown}; expected some of {sorted(_SECTION_TYPES)}")
    sections = {}
    for name, cls in _SECTION_TYPES.items():
        values = data.get(name) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section {name!r} must be a mapping, got {type(values).__name__}")
        hints = typing.get_type_hints(cls)
        known = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(values) - known)
        if bad:
            raise ConfigError(f"{source}: unknown key(s) {[f'{name}.{k}' for k in bad]}; "
                              f"expected some of {sorted(f'{name}.{k}' for k in known)}")
        sections[name] = cls(**{k: _coerce(f"{name}.{k}", v, hints[k], source) for k, v in values.items()})
    config = TrainConfig(**sections)
    config.validate()
    return config


def read_file(path: str | Path) -> dict[str, Any]:
    """Nested dict from a ``.yaml`` / ``.yml`` / ``.json`` file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from None
    return data or {}


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values parsed as YAML scalars: ``3``, ``0.1``, ``true``, ``null``)."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or key.count(".") != 1:
            raise ConfigError(f"override {item!r}: expected section.key=value (e.g. optim.epochs=30)")
        section, name = key.split(".")
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            value = text
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            raise ConfigError(f"override {item!r}: section {section!r} is not a mapping")
        data[section][name] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults, then the file (if any), then the overrides."""
    data = read_file(path) if path is not None else {}
    source = str(path) if path is not None else "overrides"
    return from_dict(apply_overrides(data, overrides or []), source)


def dump_yaml(config: TrainConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
