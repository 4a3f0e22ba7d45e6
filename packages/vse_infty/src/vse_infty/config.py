"""Training configuration: sections ``model``, ``method``, ``data``, ``optim``, ``run`` from YAML / JSON + overrides.

Defaults are the UniPT recipe on VSE-infty (Paranioar/UniPT@3fa457d987:VSE-infty/train_f30k_wsl.sh and
arguments.py; the host is woodfrog/vse_infty): ResNeXt-101 32x8d WSL grid + BERT-base, UniPT on both towers
(d = 1024 / 2), 512 px input (``input_scale_factor 2.0``), global batch 112, 25 epochs, AdamW lr 5e-4 with weight
decay 1e-4, lr x 0.1 from epoch 15 (``lr_update``), gradient norm clipped at 2, VSE++ hinge loss with margin 0.2:
the sum over all negatives in epoch 0, the hardest negative from epoch 1 on (``vse_mean_warmup_epochs``), and in
epoch 1 the loss scaled by ``step / steps`` (upstream ``warmup_alpha``). The model with the best validation rsum
(split ``dev``) is kept and tested.

    vse-infty train --config f30k_unipt data.root=/data/f30k model.text_encoder=/models/bert-base

The ``model`` and ``method`` sections are :class:`vse_infty.model.config.ModelConfig` and
:class:`vse_infty.model.config.MethodConfig`. Every unknown key, wrong type or invalid value raises
:class:`ConfigError` naming the key.
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

from vse_infty.model.config import MethodConfig, ModelConfig

__all__ = [
    "DATASETS",
    "ConfigError",
    "DataConfig",
    "MethodConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "TrainConfig",
    "apply_overrides",
    "dump_yaml",
    "from_dict",
    "list_recipes",
    "load_config",
]

DATASETS = ("f30k", "coco")
DEFAULT_TEST_SPLIT = {"f30k": "test", "coco": "testall"}
"""Upstream test splits: Flickr30K 1K ``test``; COCO ``testall`` (the 5K images: 5-fold 1K and full 5K)."""


@dataclass
class DataConfig:
    """Where the data is and how it is batched (``data.batch_size`` is the GLOBAL batch, as upstream).

    ``root`` holds the upstream layout (``precomp/{split}_caps.txt``, ``{split}_ids.txt`` or ``{split}_ims.npy``,
    ``id_mapping.json``, the raw images). Validation uses the first 1000 images of ``dev`` and their captions as
    upstream (the first 5000 COCO ``dev`` captions; Flickr30K's ``dev`` has 1014 images); ``val_max_images`` keeps
    fewer. ``test_split`` ``None``: ``test`` for Flickr30K, ``testall`` for COCO (5-fold 1K + 5K).
    """

    dataset: str = "f30k"
    root: str = "data/f30k"
    train_split: str = "train"
    val_split: str = "dev"
    test_split: str | None = None
    val_max_images: int | None = None
    batch_size: int = 112
    eval_batch_size: int = 128
    num_workers: int = 4
    max_length: int = 512

    def resolved_test_split(self) -> str:
        return self.test_split or DEFAULT_TEST_SPLIT[self.dataset]


@dataclass
class OptimConfig:
    """AdamW and the upstream schedule.

    * lr of a parameter group: ``lr * factor * (lr_decay if epoch >= lr_update else 1)``; factors:
      ``backbone_lr_factor`` for the image backbone's own (pre-trained) parameters, ``text_lr_factor`` for the text
      encoder's (upstream ``bert_lr_factor``), 1 for everything else (peft_core method parameters, GPO, FC).
      UniPT: 1 and 1; upstream VSE-infty full fine-tuning: 0.01 and 0.1.
    * ``embedding_warmup_epochs``: epochs during which the image backbone's own parameters are held frozen even
      if the method trains them (upstream full fine-tuning: 1).
    * ``vse_mean_warmup_epochs``: epochs with the sum over all negatives before the hardest negative (VSE++).
    * ``loss_warmup_epoch``: the epoch whose loss is scaled by ``step / (len(train) // batch + 1)`` (upstream
      ``warmup_alpha``; UniPT: = ``vse_mean_warmup_epochs`` = 1; VSE-infty full fine-tuning: the first epoch that
      trains the backbone, also 1); ``None``: no ramp (upstream precomp mode).
    * ``gather_negatives``: under torchrun, the loss sees the embeddings of every process (the global batch, as
      upstream's DataParallel); otherwise each process contrasts within its own share.
    """

    epochs: int = 25
    lr: float = 5e-4
    lr_update: int = 15
    lr_decay: float = 0.1
    weight_decay: float = 1e-4
    grad_clip: float = 2.0
    backbone_lr_factor: float = 1.0
    text_lr_factor: float = 1.0
    margin: float = 0.2
    vse_mean_warmup_epochs: int = 1
    embedding_warmup_epochs: int = 0
    loss_warmup_epoch: int | None = 1
    gather_negatives: bool = True


@dataclass
class RunConfig(RunSection):
    """Output, device, resume and logging (the shared keys: :class:`peft_core.runtime.config.RunSection`).

    ``eval_before`` results are stored as ``*_before`` in the result. ``log_every``: steps between log lines
    (upstream ``log_step`` 200).
    """

    output_dir: str = "runs/vse_infty"
    log_every: int = 200


@dataclass
class TrainConfig(ConfigRoot):
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> None:
        """Check values (types are checked when the config is built); errors name the key."""
        d, o, r = self.data, self.optim, self.run
        check_choices({"data.dataset": (d.dataset, DATASETS)})
        check_positive({"data.batch_size": d.batch_size, "data.eval_batch_size": d.eval_batch_size,
                        "data.max_length": d.max_length, "optim.epochs": o.epochs, "optim.lr": o.lr,
                        "optim.lr_decay": o.lr_decay, "run.eval_every": r.eval_every, "run.log_every": r.log_every})
        check_positive({"data.num_workers": d.num_workers, "optim.weight_decay": o.weight_decay,
                        "optim.grad_clip": o.grad_clip, "optim.backbone_lr_factor": o.backbone_lr_factor,
                        "optim.text_lr_factor": o.text_lr_factor, "optim.margin": o.margin,
                        "optim.lr_update": o.lr_update, "optim.vse_mean_warmup_epochs": o.vse_mean_warmup_epochs,
                        "optim.embedding_warmup_epochs": o.embedding_warmup_epochs}, strict=False)
        if d.val_max_images is not None:
            check_positive({"data.val_max_images": d.val_max_images})
        if o.loss_warmup_epoch is not None:
            check_positive({"optim.loss_warmup_epoch": o.loss_warmup_epoch}, strict=False)
        for key, split in (("data.train_split", d.train_split), ("data.val_split", d.val_split),
                           ("data.test_split", d.test_split)):
            if split is not None and (not split or "/" in split):
                raise ConfigError(f"{key}={split!r} is not allowed; expected a split name such as 'train', 'dev', "
                                  "'test' or 'testall' (files precomp/<split>_caps.txt ...)")
        r.check()


def from_dict(data: dict[str, Any], source: str = "config") -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from nested dicts; unknown sections or keys are errors."""
    return runtime_config.from_dict(TrainConfig, data, source)


def list_recipes() -> list[str]:
    """The shipped upstream recipes: ``{f30k,coco}_{unipt,full_finetune,precomp}``."""
    return sorted(runtime_config.recipe_files("vse_infty"))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults, then the file or shipped recipe (if any), then the ``section.key=value`` overrides."""
    return runtime_config.load_config(TrainConfig, path, overrides, package="vse_infty")
