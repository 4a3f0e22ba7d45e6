"""Training checkpoints: adapters, head, optimizer, scaler, epoch and RNG state in one file, written atomically.

    payload = {"format", "epoch", "global_step", "recipe", "config", "adapters": {name: adapter_state_dict},
               "head": head state, "model": full state (full fine-tuning only), "optimizer", "scaler", "rng",
               "best", "history"}

Every tensor is cloned to the CPU when the payload is built, so a saved "best" checkpoint is a copy of the weights
at that epoch (upstream kept ``model_best = model``, a reference to the live model, and so saved the last weights
as the best: bruceyo/V-PETL@661198dd38:main.py). Files are written with ``peft_core.io.atomic_write`` (temporary file,
fsync, rename): an interrupted save never leaves a truncated checkpoint. The payload holds only tensors and plain
Python values, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peft_core.runtime.checkpointing import (
    BEST,
    LAST,
    TrainCheckpointError,
    adapters_state,
    capture_rng,
    cpu_copy,
    load_adapters_state,
    restore_rng,
    save_checkpoint,
)
from peft_core.runtime.checkpointing import read_checkpoint as _read
from torch import nn

__all__ = ["BEST", "FORMAT", "LAST", "TrainCheckpointError", "capture_rng", "load_trainable_state",
           "read_checkpoint", "restore_rng", "save_checkpoint", "trainable_state"]

FORMAT = "video-swin-vpetl/train-checkpoint/1"


def trainable_state(model: nn.Module, head: str, full: bool) -> dict[str, Any]:
    """Copies of the adapters (peft_core name-free keys), the head and, for full fine-tuning, the whole model."""
    out: dict[str, Any] = {"adapters": adapters_state(model), "head": cpu_copy(model.get_submodule(head).state_dict())}
    if full:
        out["model"] = cpu_copy(model.state_dict())
    return out


def load_trainable_state(model: nn.Module, payload: dict[str, Any], head: str, source: str) -> None:
    """Load what :func:`trainable_state` saved; adapter names and keys must match the model's."""
    if "model" in payload:
        model.load_state_dict(payload["model"])
    load_adapters_state(model, payload.get("adapters", {}), source)
    model.get_submodule(head).load_state_dict(payload["head"])


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint written by this package (format checked)."""
    return _read(path, FORMAT, "official Video Swin weights go in model.pretrained")
