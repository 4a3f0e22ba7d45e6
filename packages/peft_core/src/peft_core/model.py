"""Functional API: add, activate, disable, delete, merge and remove adapters on an unmodified model.

    from peft_core import add_adapter, make_config, mark_trainable
    add_adapter(model, make_config("lora", target_modules=["q_proj", "v_proj"], r=8))
    mark_trainable(model)            # only the adapter (and modules_to_save) require grad

Several named adapters may live on one model; each forward uses the active ones. What was targeted is recorded
in :func:`adapter_records`. :func:`remove_adapters` restores the original model exactly (state_dict and outputs).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from peft_core.config import PetlConfig
from peft_core.layer import PETL_ATTR, MethodLayer
from peft_core.registry import get_method
from peft_core.targeting import find_targets

_REGISTRY_ATTR = "_petl_adapters"


@dataclass
class AdapterRecord:
    """What an adapter is and where it went."""

    name: str
    config: PetlConfig
    hosts: list[str]
    saved_modules: list[str] = field(default_factory=list)
    originals: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)


def adapter_records(model: nn.Module) -> dict[str, AdapterRecord]:
    """Adapters on ``model`` by name, in insertion order."""
    return model.__dict__.setdefault(_REGISTRY_ATTR, {})


def _check_name(name: str) -> None:
    if not name or "." in name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"adapter name={name!r} is not allowed; expected letters, digits, '_' or '-' (no dots)")


def add_adapter(model: nn.Module, config: PetlConfig, name: str = "default") -> AdapterRecord:
    """Attach ``config``'s method to ``model`` under ``name`` and make it active (with the other active ones).

    Everything is resolved and validated before the model is changed: an error leaves the model untouched.
    """
    _check_name(name)
    records = adapter_records(model)
    if name in records:
        raise ValueError(f"adapter name={name!r} already exists on this model; delete it first or pick another")
    tuner = get_method(config.method)
    config.validate()
    plan = tuner.plan(model, config)
    saved = _resolve_modules_to_save(model, config)
    layers = [(p, p.build()) for p in plan]  # may raise: the model is still untouched
    for p, layer in layers:
        host_dict = getattr(p.host, PETL_ATTR, None)
        if host_dict is None:
            host_dict = nn.ModuleDict()
            p.host.add_module(PETL_ATTR, host_dict)
        _move_like(layer, p.host)
        layer.train(p.host.training)
        host_dict[name] = layer
        layer.adapter_name = name
        layer.attach(p.host)
    originals = {n: {k: v.detach().clone() for k, v in model.get_submodule(n).state_dict().items()} for n in saved}
    record = AdapterRecord(name, config, [p.host_name for p in plan], saved, originals)
    records[name] = record
    return record


def _move_like(layer: nn.Module, host: nn.Module) -> None:
    """Put a new layer on the host's device and floating dtype."""
    ref = next((t for t in [*host.parameters(), *host.buffers()] if t.is_floating_point()), None)
    if ref is not None:
        layer.to(device=ref.device, dtype=ref.dtype)


def _resolve_modules_to_save(model: nn.Module, config: PetlConfig) -> list[str]:
    if not config.modules_to_save:
        return []
    found = find_targets(model, list(config.modules_to_save), what=f"{config.method} modules_to_save")
    names = [n for n, _ in found]
    # keep only outermost matches (a module and its children are saved once)
    return [n for n in names if not any(n != o and n.startswith(o + ".") for o in names)]


def iter_layers(model: nn.Module, name: str | None = None) -> Iterator[tuple[str, nn.Module, MethodLayer]]:
    """``(host_name, host, layer)`` for every layer of adapter ``name`` (all adapters if None)."""
    for host_name, host in list(model.named_modules()):
        host_dict = host._modules.get(PETL_ATTR)
        if not isinstance(host_dict, nn.ModuleDict):
            continue
        for adapter, layer in host_dict.items():
            if name is None or adapter == name:
                yield host_name, host, layer


def _require(model: nn.Module, names: Iterable[str]) -> list[str]:
    records = adapter_records(model)
    names = list(names)
    for n in names:
        if n not in records:
            raise ValueError(f"adapter name={n!r} is not on this model; it has {list(records)}")
    return names


def set_active_adapters(model: nn.Module, names: str | Iterable[str]) -> None:
    """Make exactly ``names`` active (in insertion order)."""
    names = _require(model, [names] if isinstance(names, str) else names)
    for _, _, layer in iter_layers(model):
        layer.active = layer.adapter_name in names


def active_adapters(model: nn.Module) -> list[str]:
    active = {layer.adapter_name for _, _, layer in iter_layers(model) if layer.active}
    return [n for n in adapter_records(model) if n in active]


@contextlib.contextmanager
def disable_adapters(model: nn.Module) -> Iterator[None]:
    """Run the base model: inside the block no adapter acts."""
    states = [(layer, layer.active) for _, _, layer in iter_layers(model)]
    for layer, _ in states:
        layer.active = False
    try:
        yield
    finally:
        for layer, state in states:
            layer.active = state


def delete_adapter(model: nn.Module, name: str) -> None:
    """Detach and delete adapter ``name``; the other adapters stay as they are."""
    _require(model, [name])
    for _, host, layer in list(iter_layers(model, name)):
        if layer.merged:
            layer.unmerge(host)
        layer.detach(host)
        host_dict = host._modules[PETL_ATTR]
        del host_dict[name]
        if len(host_dict) == 0:
            del host._modules[PETL_ATTR]
    record = adapter_records(model).pop(name)
    if record.saved_modules and not any(r.saved_modules for r in adapter_records(model).values()):
        _restore_saved(model, record)


def _restore_saved(model: nn.Module, record: AdapterRecord) -> None:
    for module_name, state in record.originals.items():
        model.get_submodule(module_name).load_state_dict(state)


def remove_adapters(model: nn.Module) -> nn.Module:
    """Delete every adapter; the model's state_dict and outputs are the original ones again."""
    records = list(adapter_records(model).values())
    for record in reversed(records):
        delete_adapter(model, record.name)
    for record in records:
        _restore_saved(model, record)
    model.__dict__.pop(_REGISTRY_ATTR, None)
    return model


def merge_adapter(model: nn.Module, name: str = "default") -> None:
    """Fold adapter ``name`` into the base weights (only methods that are linear in the weights can merge)."""
    _require(model, [name])
    layers = list(iter_layers(model, name))
    bad = [h for h, _, layer in layers if not layer.can_merge()]
    if bad:
        raise ValueError(f"adapter {name!r} cannot be merged: layers at {bad[:4]} are not mergeable")
    for _, host, layer in layers:
        if not layer.merged:
            layer.merge(host)
            layer.merged = True


def unmerge_adapter(model: nn.Module, name: str = "default") -> None:
    """Undo :func:`merge_adapter`: the base weights return to their original values (float tolerance)."""
    _require(model, [name])
    for _, host, layer in iter_layers(model, name):
        if layer.merged:
            layer.unmerge(host)
            layer.merged = False


def merge_and_unload(model: nn.Module, name: str = "default") -> nn.Module:
    """Merge adapter ``name`` into the base weights and remove every adapter layer: a plain model remains."""
    merge_adapter(model, name)
    for _, host, layer in list(iter_layers(model, name)):
        layer.detach(host)
        del host._modules[PETL_ATTR][name]
        if len(host._modules[PETL_ATTR]) == 0:
            del host._modules[PETL_ATTR]
    adapter_records(model).pop(name)
    return model


def adapter_parameters(model: nn.Module, name: str | None = None) -> dict[str, nn.Parameter]:
    """Parameters owned by adapter ``name`` (all adapters if None), keyed by their model names."""
    out: dict[str, nn.Parameter] = {}
    for host_name, _, layer in iter_layers(model, name):
        prefix = _layer_prefix(host_name, layer)
        for pname, p in layer.named_parameters():
            out[prefix + pname] = p
    return out


def _layer_prefix(host_name: str, layer: MethodLayer) -> str:
    """The model-level name prefix of a layer's tensors: ``<host>.petl.<adapter>.``."""
    prefix = f"{PETL_ATTR}.{layer.adapter_name}."
    return f"{host_name}.{prefix}" if host_name else prefix


def adapter_buffers(model: nn.Module, name: str | None = None) -> dict[str, torch.Tensor]:
    """Persistent buffers owned by adapter ``name`` (e.g. BatchNorm statistics of a side network)."""
    out: dict[str, torch.Tensor] = {}
    for host_name, _, layer in iter_layers(model, name):
        prefix = _layer_prefix(host_name, layer)
        for bname, b in layer.named_buffers():
            owner, _, leaf = bname.rpartition(".")
            module = layer.get_submodule(owner) if owner else layer
            if leaf not in module._non_persistent_buffers_set:
                out[prefix + bname] = b
    return out


def mark_trainable(model: nn.Module, names: str | Iterable[str] | None = None, extra: Iterable[str] = ()) -> None:
    """Freeze every parameter except those of adapters ``names`` (default: all), their ``modules_to_save``, and
    the modules whose names end with one of ``extra`` (task heads)."""
    records = adapter_records(model)
    names = list(records) if names is None else _require(model, [names] if isinstance(names, str) else names)
    for p in model.parameters():
        p.requires_grad_(False)
    for n in names:
        for _, _, layer in iter_layers(model, n):
            frozen = layer.frozen_parameter_names()
            for pname, p in layer.named_parameters():
                p.requires_grad_(pname not in frozen)
        for module_name in records[n].saved_modules:
            for p in model.get_submodule(module_name).parameters():
                p.requires_grad_(True)
    extra = list(extra)
    if extra:
        for _, module in find_targets(model, extra, what="mark_trainable extra"):
            for p in module.parameters():
                p.requires_grad_(True)
