"""Training configuration: five sections read from a YAML or JSON file plus ``section.key=value`` overrides.

    vl-pet train --config configs/vlpet-large-bart.yaml data.root=/data/datasets optim.epochs=5

Sections: ``model`` and ``method`` (:mod:`vl_adapter_vlpet.models.config`), ``data``, ``optim`` and ``run`` (here).
Defaults are the upstream VL-PET-large VL-BART image-text recipe (HenryHZY/VL-PET@7430cad
``scripts/image-text/VL-PET-large.sh`` with ``src/multitask.py`` and ``src/param.py``): tasks vqa, gqa, nlvr2,
caption; batch 500 (the VQA batch; GQA ``int(B*100/60)``, NLVR2 ``int(B*20/60)``, COCO ``int(B*50/60)``), task
prompts on, AdamW lr 1e-3 eps 1e-6 weight decay 0.01 (not on names containing ``bias`` / ``LayerNorm.weight``),
linear warm-up over 10% of the steps then linear decay to 0, gradient clipping at norm 5, dropout 0.1, 20 epochs,
AMP on CUDA. Upstream learning rates per method (``configs/*.yaml``): VL-PET BART 1e-3 (bs 500), VL-PET T5 3e-4
(bs 300), full fine-tuning 1e-4 without task prompts, VL-Adapter / LoRA / BitFit / Compacter / prompt tuning 1e-3,
LST 3e-3 with weight decay 0.03, video tasks 7e-4 (bs 50).

Every unknown key, wrong type or invalid value raises :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
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

from vl_adapter_vlpet.models.config import MethodConfig, ModelConfig

__all__ = [
    "IMAGE_TASKS",
    "UPSTREAM_SPLITS",
    "VIDEO_TASKS",
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
    "load_config",
    "normalize_overrides",
]

IMAGE_TASKS = ("vqa", "gqa", "nlvr2", "caption")
VIDEO_TASKS = ("tvqa", "how2qa", "tvc", "yc2c")

UPSTREAM_SPLITS: dict[str, dict[str, str]] = {
    # src/multitask.py main_worker: GQA trains on train+valid and validates on testdev (its only other labelled split)
    "vqa": {"train": "karpathy_train", "val": "karpathy_val", "test": "karpathy_test"},
    "gqa": {"train": "train,valid", "val": "testdev", "test": "testdev"},
    "nlvr2": {"train": "train", "val": "valid", "test": "test"},
    "caption": {"train": "karpathy_train", "val": "karpathy_val", "test": "karpathy_test"},
    # src/multitask_video.py main_worker
    "tvqa": {"train": "train", "val": "val", "test": "test_public,test_release"},
    "how2qa": {"train": "train_release", "val": "val_release", "test": "test_public_release"},
    "tvc": {"train": "train_release", "val": "val_release", "test": "test_release"},
    "yc2c": {"train": "train_release", "val": "val_release", "test": "test_release"},
}
"""Split names per task and role (``train`` / ``val`` / ``test``) as upstream; ``data.splits`` overrides them."""

FEATURE_KINDS = ("h5", "parquet", "npz")
SPLIT_ROLES = ("train", "val", "test")


@dataclass
class DataConfig:
    """``data`` section.

    Attributes:
        tasks: image-text tasks (``vqa``, ``gqa``, ``nlvr2``, ``caption``) or video tasks (``tvqa``, ``how2qa``,
            ``tvc``, ``yc2c``); one task is a single-task run.
        root: the upstream ``datasets/`` folder (annotation JSON files and, by default, the features).
        features: feature store kind: ``h5`` (CLIP RN101 grid features, one h5 file per image), ``parquet`` (shards
            of the HF dataset release ylsung/VL-Adapter-datasets) or ``npz`` (VALUE CLIP-ViT video features).
        feature_paths: per feature source (``coco``, ``vg``, ``gqa``, ``nlvr``, ``video``) a file or folder
            replacing the upstream location under ``root`` (:mod:`vl_adapter_vlpet.data.sources`); for parquet, a
            folder of shards or one shard.
        splits: per task, ``{train|val|test: split name}`` replacing :data:`UPSTREAM_SPLITS`.
        batch_size: the VQA (or, for video, every task's) training batch per process; the other image tasks derive
            theirs as upstream. eval_batch_size: the same for evaluation (upstream: = batch_size).
        task_prompts: prefix the inputs with ``vqa: `` / ``gqa: `` / ``nlvr: `` / ``caption: `` (upstream
            ``--use_tasks_prompts``, off in the full fine-tuning script). gqa_prompt_typo: use upstream's ``gpa: ``.
        train_limit / eval_limit: use only the first N items of every training / evaluation split (upstream
            ``--train_topk`` / ``--valid_topk``); ``None`` for all.
        num_workers: DataLoader worker processes per loader.
        train_answer: VQA / GQA training target: ``sample`` (drawn by the answers' scores, upstream) or
            ``most_common``. vqa_eval: VQA references: ``raw`` (official score from the 10 human answers) or
            ``label`` (upstream's precomputed target scores).
    """

    tasks: list[str] = field(default_factory=lambda: list(IMAGE_TASKS))
    root: str = "datasets"
    features: str = "h5"
    feature_paths: dict = field(default_factory=dict)
    splits: dict = field(default_factory=dict)
    batch_size: int = 500
    eval_batch_size: int | None = None
    task_prompts: bool = True
    gqa_prompt_typo: bool = False
    train_limit: int | None = None
    eval_limit: int | None = None
    num_workers: int = 4
    train_answer: str = "sample"
    vqa_eval: str = "raw"

    def split(self, task: str, role: str) -> str:
        """The split name of ``task`` for ``role`` (``train`` / ``val`` / ``test``)."""
        return {**UPSTREAM_SPLITS[task], **self.splits.get(task, {})}[role]

    @property
    def is_video(self) -> bool:
        return all(t in VIDEO_TASKS for t in self.tasks)

    def reader(self, model: ModelConfig) -> SimpleNamespace:
        """The attributes the data layer reads (:mod:`vl_adapter_vlpet.data.sources`): this section plus the visual
        token count of the ``model`` section (``pool_size`` = sqrt(n_vis_tokens) when ``model.downsample``, else
        the 49 grid tokens; ``video_frames`` = n_vis_tokens, upstream ``--n_boxes``)."""
        return SimpleNamespace(**dataclasses.asdict(self), pool_size=model.pool_size if model.downsample else None,
                               video_frames=model.n_vis_tokens)


@dataclass
class OptimConfig:
    """``optim`` section (upstream ``trainer_base.py:create_optimizer_and_scheduler``, ``param.py`` defaults).

    ``no_decay`` are name substrings whose parameters get no weight decay (upstream ``["bias", "LayerNorm.weight"]``;
    BART / T5 norms are named ``*layer_norm*``, so upstream decays their gains). ``dropout`` sets the model's
    dropout, attention and activation dropout (upstream ``--dropout``); ``None`` keeps the checkpoint's values.
    """

    lr: float = 1e-3
    epochs: int = 20
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    adam_eps: float = 1e-6
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    no_decay: list[str] = field(default_factory=lambda: ["bias", "LayerNorm.weight"])
    clip_grad_norm: float = 5.0
    dropout: float | None = 0.1


@dataclass
class RunConfig(RunSection):
    """``run`` section (the shared keys: :class:`peft_core.runtime.config.RunSection`).

    ``test_checkpoint``: ``best`` tests the weights of the epoch with the best validation average over the tasks;
    ``last`` tests the last epoch's weights (what upstream ``src/multitask.py`` does). ``stop_after`` stops after N
    epochs of this invocation (the same command resumes). ``eval_every``: validate every N epochs and after the last
    one; 0 never validates (the last weights are tested). ``store_gates`` writes per-layer VL-PET gate statistics on
    the validation set (``gates.json``, ``gates.png``; upstream ``--use_store_gate_large``), over at most
    ``gate_batches`` batches per task. ``quiet`` keeps stderr to warnings (``log.txt`` has everything).
    ``init_from`` initialises the VL model's own weights (not the method's) from a full fine-tuning checkpoint of this
    package or a state dict file before training (the demo's pre-trained backbone; real runs use
    ``model.pretrained``).
    """

    output_dir: str = "runs/vl_pet"
    seed: int = 42
    test_checkpoint: str = "best"
    quiet: bool = False
    log_every: int = 10
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "vl_pet"
    store_gates: bool = False
    gate_batches: int | None = None
    init_from: str | None = None


@dataclass
class TrainConfig(ConfigRoot):
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> None:
        """Check values (types are checked when the config is built)."""
        d, o, r = self.data, self.optim, self.run
        check_positive({"data.batch_size": d.batch_size, "optim.epochs": o.epochs, "optim.lr": o.lr,
                        "optim.adam_eps": o.adam_eps, "run.log_every": r.log_every})
        check_positive({"optim.weight_decay": o.weight_decay,
                        "optim.warmup_ratio": o.warmup_ratio, "optim.clip_grad_norm": o.clip_grad_norm,
                        "data.num_workers": d.num_workers}, strict=False)
        optional = {"data.eval_batch_size": d.eval_batch_size, "data.train_limit": d.train_limit,
                    "data.eval_limit": d.eval_limit, "run.gate_batches": r.gate_batches}
        check_positive({k: v for k, v in optional.items() if v is not None})
        if o.dropout is not None and not 0.0 <= o.dropout < 1.0:
            raise ConfigError(f"optim.dropout={o.dropout!r} is not allowed; expected a number in [0, 1) or null")
        if o.warmup_ratio > 1.0:
            raise ConfigError(f"optim.warmup_ratio={o.warmup_ratio!r} is not allowed; expected a number in [0, 1]")
        if len(o.adam_betas) != 2 or not all(isinstance(b, int | float) and 0.0 <= b < 1.0 for b in o.adam_betas):
            raise ConfigError(f"optim.adam_betas={o.adam_betas!r} is not allowed; expected two numbers in [0, 1)")
        self._validate_tasks()
        from vl_adapter_vlpet.methods import METHODS

        try:
            METHODS[self.method.preset].recipe(self.model.backbone)
        except ValueError as exc:
            raise ConfigError(f"method.preset={self.method.preset!r} with model.backbone={self.model.backbone!r}: "
                              f"{exc}") from None
        check_choices({"data.features": (d.features, FEATURE_KINDS),
                       "data.train_answer": (d.train_answer, ("sample", "most_common")),
                       "data.vqa_eval": (d.vqa_eval, ("raw", "label")),
                       "run.test_checkpoint": (r.test_checkpoint, ("best", "last"))})
        if r.init_from is not None and not Path(r.init_from).is_file():
            raise ConfigError(f"run.init_from={r.init_from!r}: file not found; expected a checkpoint or state dict")
        r.check()

    def _validate_tasks(self) -> None:
        d = self.data
        if not d.tasks:
            raise ConfigError("data.tasks=[] is not allowed; expected some of "
                              f"{list(IMAGE_TASKS)} or some of {list(VIDEO_TASKS)}")
        unknown = [t for t in d.tasks if t not in UPSTREAM_SPLITS]
        if unknown or len(set(d.tasks)) != len(d.tasks):
            raise ConfigError(f"data.tasks={d.tasks!r} is not allowed; expected distinct items of "
                              f"{list(IMAGE_TASKS)} or of {list(VIDEO_TASKS)}")
        if any(t in VIDEO_TASKS for t in d.tasks) and not d.is_video:
            raise ConfigError(f"data.tasks={d.tasks!r} mixes image and video tasks; expected only image tasks "
                              f"{list(IMAGE_TASKS)} or only video tasks {list(VIDEO_TASKS)}")
        if d.is_video and d.features != "npz":
            raise ConfigError(f"data.features={d.features!r} is not allowed for video tasks; expected 'npz'")
        if not d.is_video and d.features == "npz":
            raise ConfigError("data.features='npz' is for the video tasks; expected 'h5' or 'parquet' for "
                              f"{d.tasks}")
        for task, roles in d.splits.items():
            if task not in UPSTREAM_SPLITS or not isinstance(roles, dict):
                raise ConfigError(f"data.splits.{task}={roles!r} is not allowed; expected a task of "
                                  f"{sorted(UPSTREAM_SPLITS)} mapped to {{train|val|test: split name}}")
            for role, name in roles.items():
                if role not in SPLIT_ROLES or not isinstance(name, str) or not name:
                    raise ConfigError(f"data.splits.{task}.{role}={name!r} is not allowed; expected a split name "
                                      f"for one of {list(SPLIT_ROLES)}")
        sources = ("coco", "vg", "gqa", "nlvr", "video")
        for source, path in d.feature_paths.items():
            if source not in sources or not isinstance(path, str):
                raise ConfigError(f"data.feature_paths.{source}={path!r} is not allowed; expected one of "
                                  f"{list(sources)} mapped to a file or folder path")


def from_dict(data: dict[str, Any], source: str = "config") -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from nested dicts; unknown sections or keys are errors."""
    return runtime_config.from_dict(TrainConfig, data, source)


_EXPONENT_FLOAT = re.compile(r"^[+-]?\d+(\.\d*)?[eE][+-]?\d+$")


def normalize_overrides(overrides: list[str]) -> list[str]:
    """``optim.lr=3e-4`` as a number: YAML 1.1 (PyYAML) reads an exponent without a dot as a string."""
    out = []
    for item in overrides:
        key, sep, text = item.partition("=")
        out.append(f"{key}={float(text)!r}" if sep and _EXPONENT_FLOAT.match(text.strip()) else item)
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults, then the file (if any), then the overrides (``1e-3`` is read as a number)."""
    return runtime_config.load_config(TrainConfig, path, normalize_overrides(list(overrides or [])),
                                      package="vl_adapter_vlpet")
