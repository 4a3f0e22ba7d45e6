"""Training checkpoints: the trained weights, optimizer, scheduler, scaler, epoch and RNG states in one file.

    payload = {"format", "epoch", "global_step", "method", "backbone", "config",
               "adapters": {name: peft_core adapter_state_dict (name-free keys, incl. modules_to_save)},
               "trainable": {model parameter name: tensor}   trainable parameters outside the adapters
                                                            (BitFit biases, LoRA's biases, VL-Adapter's norms, ...),
               "model": full state dict                      (full fine-tuning only),
               "optimizer", "scheduler", "scaler", "rng", "rng_per_rank", "best", "history", "elapsed_s"}

Files are written atomically (``peft_core.runtime.checkpointing.save_checkpoint``) and hold only tensors and plain
values, so they load with ``torch.load(weights_only=True)``; every tensor is a CPU copy, so ``checkpoint-best.pt`` is
the weights of its epoch. Upstream (HenryHZY/VL-PET@7430cad ``src/trainer_base.py:save``) saved the whole
``state_dict`` as ``LAST.pth`` once, after the last epoch, with no optimizer state: a run could not resume.
Upstream ``LAST.pth`` files are model weights, not training checkpoints: load them with ``model.upstream_checkpoint``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from peft_core.model import adapter_parameters, adapter_records
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
           "read_checkpoint", "restore_rng", "save_checkpoint", "save_payload", "trainable_state", "unwrap"]

FORMAT = "vl-adapter-vlpet/train-checkpoint/1"


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel`` wrapper (parameter names without ``module.``)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _outside_adapters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Trainable parameters that no adapter saves: not in a method layer and not in a ``modules_to_save`` module."""
    owned = set(adapter_parameters(model))
    saved = [m for record in adapter_records(model).values() for m in record.saved_modules]
    return {n: p for n, p in model.named_parameters()
            if p.requires_grad and n not in owned and not any(n == m or n.startswith(m + ".") for m in saved)}


def trainable_state(model: nn.Module, full: bool) -> dict[str, Any]:
    """CPU copies of what training changes: the adapters, the other trainable parameters and, for full fine-tuning,
    the whole model."""
    model = unwrap(model)
    if full:
        return {"adapters": adapters_state(model), "model": cpu_copy(model.state_dict())}
    return {"adapters": adapters_state(model), "trainable": cpu_copy(dict(_outside_adapters(model)))}


def load_trainable_state(model: nn.Module, payload: dict[str, Any], source: str) -> None:
    """Load what :func:`trainable_state` saved; names and shapes must match the model's."""
    model = unwrap(model)
    if "model" in payload:
        result = model.load_state_dict(payload["model"], strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise TrainCheckpointError(f"{source}: the full model state does not fit this model (missing "
                                       f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}); "
                                       "expected a checkpoint of the same backbone and method")
    load_adapters_state(model, payload.get("adapters", {}), source)
    params = dict(model.named_parameters())
    state = payload.get("trainable", {})
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise TrainCheckpointError(f"{source}: trainable parameters {unknown[:5]} are not in the model; expected a "
                                   "checkpoint of the same backbone and method")
    with torch.no_grad():
        for name, value in state.items():
            if tuple(value.shape) != tuple(params[name].shape):
                raise TrainCheckpointError(f"{source}: {name} has shape {tuple(value.shape)}, the model's is "
                                           f"{tuple(params[name].shape)}")
            params[name].copy_(value)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint written by this package (format checked)."""
    return _read(path, FORMAT, "upstream VL-PET / VL-Adapter LAST.pth weights go in model.upstream_checkpoint")


def save_payload(out: Path, payload: dict[str, Any], best: bool) -> None:
    """Write ``checkpoint-last.pt`` (and ``checkpoint-best.pt`` when ``best``) atomically."""
    if best:
        save_checkpoint(out / BEST, payload)
    save_checkpoint(out / LAST, payload)

