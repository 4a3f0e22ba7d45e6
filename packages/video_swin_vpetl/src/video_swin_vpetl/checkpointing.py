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

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft_core import adapter_records, adapter_state_dict, load_adapter_state_dict
from peft_core.io import atomic_write
from torch import nn

FORMAT = "video-swin-vpetl/train-checkpoint/1"
LAST = "checkpoint-last.pt"
BEST = "checkpoint-best.pt"


class TrainCheckpointError(ValueError):
    """A training checkpoint is unreadable or does not fit the model / recipe."""


def _copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def capture_rng() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and Python RNG states, as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model: nn.Module, head: str, full: bool) -> dict[str, Any]:
    """Copies of the adapters (peft_core name-free keys), the head and, for full fine-tuning, the whole model."""
    out: dict[str, Any] = {
        "adapters": {name: _copy(adapter_state_dict(model, name)) for name in adapter_records(model)},
        "head": _copy(model.get_submodule(head).state_dict()),
    }
    if full:
        out["model"] = _copy(model.state_dict())
    return out


def load_trainable_state(model: nn.Module, payload: dict[str, Any], head: str, source: str) -> None:
    """Load what :func:`trainable_state` saved; adapter names and keys must match the model's."""
    adapters = payload.get("adapters", {})
    on_model = list(adapter_records(model))
    if sorted(adapters) != sorted(on_model):
        raise TrainCheckpointError(f"{source}: holds adapters {sorted(adapters)} but the model has "
                                   f"{sorted(on_model)}; "
                                   "expected the recipe the checkpoint was trained with (method.recipe)")
    if "model" in payload:
        model.load_state_dict(payload["model"])
    for name, state in adapters.items():
        load_adapter_state_dict(model, state, name, source=source)
    model.get_submodule(head).load_state_dict(payload["head"])


def save_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` atomically."""
    atomic_write(Path(path), lambda tmp: torch.save(payload, tmp))
    return Path(path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint written by this package (format checked)."""
    path = Path(path)
    if not path.is_file():
        raise TrainCheckpointError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TrainCheckpointError(f"{path}: cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise TrainCheckpointError(f"{path}: not a video-swin-vpetl training checkpoint (format {found!r}, expected "
                                   f"{FORMAT!r}); official Video Swin weights go in model.pretrained")
    return payload
