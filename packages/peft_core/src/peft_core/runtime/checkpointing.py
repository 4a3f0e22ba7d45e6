"""Training checkpoints: one ``torch.save`` payload per file, written atomically, with the RNG states.

A task package builds its payload (weights, optimizer, scaler, epoch, history, ...) with a ``"format"`` string of its
own, adds ``capture_rng()`` under ``"rng"``, and writes it with :func:`save_checkpoint` (temporary file, fsync,
rename via ``peft_core.io.atomic_write``): an interrupted save never leaves a truncated checkpoint.
:func:`read_checkpoint` loads with ``torch.load(weights_only=True)`` and checks the format string, so the payload must
hold only tensors and plain Python values. :func:`cpu_copy` clones tensors to the CPU, so a "best" checkpoint is a
copy of the weights at that point, not a reference to the live model.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from peft_core.checkpoint import adapter_state_dict, load_adapter_state_dict
from peft_core.io import atomic_write, load_tensor_file
from peft_core.model import adapter_records

LAST = "checkpoint-last.pt"
BEST = "checkpoint-best.pt"


class TrainCheckpointError(ValueError):
    """A training checkpoint is unreadable or does not fit the model / configuration."""


def cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached CPU copies of every tensor of a state dict."""
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
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def adapters_state(model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """CPU copies of every peft_core adapter on ``model`` (name-free keys), by adapter name."""
    return {name: cpu_copy(adapter_state_dict(model, name)) for name in adapter_records(model)}


def load_adapters_state(model: nn.Module, adapters: dict[str, dict[str, torch.Tensor]], source: str) -> None:
    """Load what :func:`adapters_state` saved; adapter names must match the model's."""
    on_model = list(adapter_records(model))
    if sorted(adapters) != sorted(on_model):
        raise TrainCheckpointError(f"{source}: holds adapters {sorted(adapters)} but the model has {sorted(on_model)};"
                                   " expected the method configuration the checkpoint was trained with")
    for name, state in adapters.items():
        load_adapter_state_dict(model, state, name, source=source)


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` atomically."""
    atomic_write(Path(path), lambda tmp: torch.save(payload, tmp))
    return Path(path)


def read_checkpoint(path: str | Path, fmt: str, hint: str = "") -> dict[str, Any]:
    """Read a training checkpoint whose ``"format"`` is ``fmt``; ``hint`` is appended to a format error."""
    path = Path(path)
    payload = load_tensor_file(path, TrainCheckpointError, "checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise TrainCheckpointError(f"{path}: not a training checkpoint of this package (format {found!r}, expected "
                                   f"{fmt!r}){'; ' + hint if hint else ''}")
    return payload


def resume_path(resume: str, out: Path) -> Path | None:
    """``resume``: ``"auto"`` (``out/checkpoint-last.pt`` if it exists), ``"none"``, or a checkpoint path."""
    if resume == "none":
        return None
    if resume == "auto":
        last = Path(out) / LAST
        return last if last.is_file() else None
    return Path(resume)
