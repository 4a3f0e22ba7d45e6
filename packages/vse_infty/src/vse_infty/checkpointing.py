"""Training checkpoints of a VSE model: what trains, the buffers, optimizer, scaler, epoch and RNG, written atomically.

    payload = {"format", "epoch", "global_step", "method", "config",
               "adapters": {module path: {adapter name: peft_core name-free adapter state}},
               "params": {name: tensor}      # trainable parameters not owned by a peft_core adapter (GPO, FC, ...)
               "buffers": {name: tensor}     # every persistent buffer outside the adapters (BatchNorm statistics)
               "optimizer", "scaler", "rng", "rng_per_rank", "best", "history", "extra", "elapsed_s"}

The peft_core adapters live on the tower sub-models that ``add_adapter`` was called on (the timm CNN, the text
encoder), so they are found module by module (``peft_core.adapter_records``) and saved with
``peft_core.runtime.checkpointing.adapters_state``. Full fine-tuning makes every parameter trainable, so ``params``
then holds the whole model. Buffers are small (BatchNorm running statistics) and are saved whole so that evaluation
of a checkpoint sees exactly the trained model.

Tensors are copied to the CPU when the payload is built, so ``checkpoint-best.pt`` is a copy of the weights of its
epoch (upstream VSE-infty saved ``model.state_dict()`` of both towers, frozen backbones included, with plain
``torch.save``: woodfrog/vse_infty train.py:save_checkpoint). Files are written with
``peft_core.runtime.checkpointing.save_checkpoint`` (temporary file, fsync, rename) and read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peft_core.layer import PETL_ATTR
from peft_core.model import adapter_records
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

__all__ = ["BEST", "FORMAT", "LAST", "TrainCheckpointError", "adapter_hosts", "capture_rng", "load_trainable_state",
           "read_checkpoint", "restore_rng", "save_checkpoint", "trainable_state"]

FORMAT = "vse-infty/train-checkpoint/1"


def _in_adapter(name: str) -> bool:
    return f".{PETL_ATTR}." in f".{name}."


def adapter_hosts(model: nn.Module) -> dict[str, nn.Module]:
    """``{module path: module}`` of the sub-modules carrying peft_core adapters (``""`` = ``model`` itself)."""
    return {name: module for name, module in model.named_modules()
            if not _in_adapter(name) and adapter_records(module)}


def persistent_buffers(model: nn.Module) -> dict[str, Any]:
    """Every persistent buffer (the ones in ``state_dict``) outside the peft_core adapters."""
    state = model.state_dict()
    names = {n for n, _ in model.named_buffers()}
    return {k: v for k, v in state.items() if k in names and not _in_adapter(k)}


def trainable_state(model: nn.Module) -> dict[str, Any]:
    """CPU copies of the adapters (per host module), the other trainable parameters and the buffers."""
    return {
        "adapters": {path: adapters_state(module) for path, module in adapter_hosts(model).items()},
        "params": cpu_copy({n: p for n, p in model.named_parameters() if p.requires_grad and not _in_adapter(n)}),
        "buffers": cpu_copy(persistent_buffers(model)),
    }


def load_trainable_state(model: nn.Module, payload: dict[str, Any], source: str) -> None:
    """Load what :func:`trainable_state` saved; every name and shape must match the model built from the config."""
    hosts = adapter_hosts(model)
    saved = payload.get("adapters", {})
    if sorted(saved) != sorted(hosts):
        raise TrainCheckpointError(f"{source}: holds peft_core adapters on modules {sorted(saved)} but the model has "
                                   f"them on {sorted(hosts)}; expected the method the checkpoint was trained with")
    params = dict(model.named_parameters())
    buffers = persistent_buffers(model)
    for kind, state, targets in (("parameter", payload.get("params", {}), params),
                                 ("buffer", payload.get("buffers", {}), buffers)):
        unknown = sorted(set(state) - set(targets))
        if unknown:
            raise TrainCheckpointError(f"{source}: {kind}(s) {unknown[:5]} are not in the model; expected the model "
                                       "configuration the checkpoint was trained with")
        for name, tensor in state.items():
            if tuple(tensor.shape) != tuple(targets[name].shape):
                raise TrainCheckpointError(f"{source}: {kind} {name!r} has shape {tuple(tensor.shape)}, the model "
                                           f"expects {tuple(targets[name].shape)}")
    for path, module in hosts.items():
        load_adapters_state(module, saved[path], f"{source} [{path or 'root'}]")
    for state, targets in ((payload.get("params", {}), params), (payload.get("buffers", {}), buffers)):
        for name, tensor in state.items():
            targets[name].data.copy_(tensor)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint written by this package (format checked)."""
    return _read(path, FORMAT, "upstream VSE-infty checkpoints go in model.vse_checkpoint")
