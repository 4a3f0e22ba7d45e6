"""Adapter-only checkpoints: ``adapter_model.safetensors`` + ``adapter_config.json``, written atomically.

The state holds the adapter's parameters and persistent buffers (e.g. BatchNorm statistics of a side network).

Keys are the model names of the adapter's parameters with the adapter name removed
(``encoder.layer.0.attention.self.query.petl.lora_A.weight``), so a checkpoint loads under any adapter name. The
``modules_to_save`` are stored under ``modules_to_save.<module name>.<param>``. Loading checks every key and shape
before copying anything: a mismatch names the first offending module and both shapes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from peft_core.config import PetlConfig, config_from_dict
from peft_core.io import atomic_write, atomic_write_text
from peft_core.layer import PETL_ATTR
from peft_core.model import adapter_buffers, adapter_parameters, adapter_records, add_adapter

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
_SAVED = "modules_to_save."


class CheckpointError(ValueError):
    """An adapter checkpoint does not fit the model."""


def _strip(key: str, name: str) -> str:
    marker = f"{PETL_ATTR}.{name}."
    if key.startswith(marker):
        return PETL_ATTR + "." + key[len(marker) :]
    return key.replace(f".{marker}", f".{PETL_ATTR}.", 1)


def adapter_state_dict(model: nn.Module, name: str = "default") -> dict[str, torch.Tensor]:
    """The adapter's tensors under name-free keys (plus its modules_to_save)."""
    records = adapter_records(model)
    if name not in records:
        raise ValueError(f"adapter name={name!r} is not on this model; it has {list(records)}")
    owned = adapter_parameters(model, name) | adapter_buffers(model, name)
    state = {_strip(k, name): p.detach() for k, p in owned.items()}
    for module_name in records[name].saved_modules:
        for k, v in model.get_submodule(module_name).state_dict().items():
            state[f"{_SAVED}{module_name}.{k}"] = v.detach()
    return state


def load_adapter_state_dict(model: nn.Module, state: dict[str, torch.Tensor], name: str = "default", *,
                            source: str = "state dict") -> None:
    """Copy ``state`` into adapter ``name``; every key and shape is checked before anything is copied."""
    owned = adapter_parameters(model, name) | adapter_buffers(model, name)
    targets: dict[str, torch.Tensor] = {_strip(k, name): p for k, p in owned.items()}
    for module_name in adapter_records(model)[name].saved_modules:
        for k, v in model.get_submodule(module_name).state_dict().items():
            targets[f"{_SAVED}{module_name}.{k}"] = v
    missing = sorted(set(targets) - set(state))
    unexpected = sorted(set(state) - set(targets))
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: keys do not match adapter {name!r}: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    for key in targets:
        if tuple(state[key].shape) != tuple(targets[key].shape):
            module = key.split(f".{PETL_ATTR}.")[0]
            raise CheckpointError(
                f"{source}: shape mismatch at module {module!r} ({key}): checkpoint has {tuple(state[key].shape)}, "
                f"the model expects {tuple(targets[key].shape)}"
            )
    with torch.no_grad():
        for key, target in targets.items():
            target.copy_(state[key].to(dtype=target.dtype, device=target.device))


def save_adapter(model: nn.Module, directory: str | Path, name: str = "default") -> Path:
    """Write the adapter's weights and config to ``directory`` (each file atomically). Returns the folder."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    record = adapter_records(model).get(name)
    if record is None:
        raise ValueError(f"adapter name={name!r} is not on this model; it has {list(adapter_records(model))}")
    state = {k: v.contiguous().cpu() for k, v in adapter_state_dict(model, name).items()}
    meta = {"format": "peft_core", "method": record.config.method}
    atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(state, str(p), metadata=meta))
    atomic_write_text(directory / CONFIG_NAME, record.config.to_json())
    return directory


def read_adapter_config(directory: str | Path) -> PetlConfig:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: adapter config not found (expected {CONFIG_NAME} written by save_adapter)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    return config_from_dict(data, source=str(path))


def load_adapter(model: nn.Module, directory: str | Path, name: str = "default") -> PetlConfig:
    """Load a saved adapter: adds it under ``name`` from the saved config if the model does not have it yet."""
    directory = Path(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: adapter weights not found (expected {WEIGHTS_NAME} from save_adapter)")
    config = read_adapter_config(directory)
    created = name not in adapter_records(model)
    if created:
        add_adapter(model, config, name)
    try:
        load_adapter_state_dict(model, load_file(str(weights)), name, source=str(weights))
    except Exception:
        if created:
            from peft_core.model import delete_adapter

            delete_adapter(model, name)
        raise
    return config
