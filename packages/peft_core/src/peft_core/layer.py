"""The one injection mechanism every method uses: a :class:`MethodLayer` attached to a host module.

A method's parameters for one adapter name at one host module live in ``host.petl[adapter_name]`` (an
``nn.ModuleDict`` added to the unmodified host), and act on the host through forward hooks:

* ``pre(host, args, kwargs)`` may return new ``(args, kwargs)`` (input transforms, captured inputs);
* ``post(host, args, kwargs, output)`` may return a new output (serial adapters: ``f(out)``; parallel adapters and
  LoRA: ``out + g(x)``).

Parameters of the host that no hook can reach (``nn.MultiheadAttention.in_proj_weight``) are modified through
:func:`torch.nn.utils.parametrize` with :class:`AdditiveDelta`. A layer that needs more (prefix tuning on an
attention) overrides :meth:`MethodLayer.attach` / :meth:`MethodLayer.detach`.

No model code is copied: the host keeps its class and its own parameter names, so a base checkpoint still loads
into an injected model, and removing the layers restores the original module exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.hooks import RemovableHandle

PETL_ATTR = "petl"
"""Name of the ``nn.ModuleDict`` added to each host module."""

INPUT_KWARGS = ("hidden_states", "x", "input", "query", "inputs_embeds", "input_ids")


def primary_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The main tensor a module was called with: its first positional argument or a known keyword."""
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    for key in INPUT_KWARGS:
        if isinstance(kwargs.get(key), torch.Tensor):
            return kwargs[key]
    raise TypeError(
        f"cannot find the input tensor among positional args ({len(args)}) or keywords {sorted(kwargs)}; "
        f"expected a tensor as first argument or one of {INPUT_KWARGS}"
    )


def replace_primary_input(args: tuple, kwargs: dict, value: torch.Tensor) -> tuple[tuple, dict]:
    if args and isinstance(args[0], torch.Tensor):
        return (value, *args[1:]), kwargs
    for key in INPUT_KWARGS:
        if isinstance(kwargs.get(key), torch.Tensor):
            return args, {**kwargs, key: value}
    raise TypeError("cannot find the input tensor to replace")


def primary_output(output: Any) -> torch.Tensor:
    """The main tensor of a module output: the output itself, or the first element of a tuple / ModelOutput."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if hasattr(output, "to_tuple"):
        return output.to_tuple()[0]
    raise TypeError(f"cannot find the output tensor in a {type(output).__name__}")


def map_primary_output(output: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply ``fn`` to the main tensor of ``output`` and return the output with it replaced."""
    if isinstance(output, torch.Tensor):
        return fn(output)
    if isinstance(output, tuple):
        return (fn(output[0]), *output[1:])
    if isinstance(output, list):
        return [fn(output[0]), *output[1:]]
    if hasattr(output, "to_tuple"):
        key = next(iter(output.keys()))
        output[key] = fn(output[key])
        return output
    raise TypeError(f"cannot find the output tensor in a {type(output).__name__}")


class MethodLayer(nn.Module):
    """Base class of a method's per-host module for one adapter name.

    Subclasses define parameters in ``__init__`` and override :meth:`pre` and/or :meth:`post`; the hooks run only
    while the layer is active and not merged.
    """

    def __init__(self) -> None:
        super().__init__()
        self.active = True
        self.merged = False
        self._handles: list[RemovableHandle] = []

    # -------------------------------------------------------------------------------------------- hook plumbing
    def attach(self, host: nn.Module) -> None:
        """Register this layer's hooks on ``host``."""
        if type(self).pre is not MethodLayer.pre:
            self._handles.append(host.register_forward_pre_hook(self._pre_hook, with_kwargs=True))
        if type(self).post is not MethodLayer.post:
            self._handles.append(host.register_forward_hook(self._post_hook, with_kwargs=True))

    def detach(self, host: nn.Module) -> None:
        """Undo :meth:`attach`."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _pre_hook(self, host: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if not self.active or self.merged:
            return None
        return self.pre(host, args, kwargs)

    def _post_hook(self, host: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        if not self.active or self.merged:
            return None
        return self.post(host, args, kwargs, output)

    def pre(self, host: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        return None

    def post(self, host: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        return None

    def frozen_parameter_names(self) -> set[str]:
        """Names (relative to this layer) of parameters :func:`peft_core.mark_trainable` keeps frozen."""
        return set()

    # ----------------------------------------------------------------------------------------------- merging
    def can_merge(self) -> bool:
        return False

    def merge(self, host: nn.Module) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot be merged into the base weights")

    def unmerge(self, host: nn.Module) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot be merged into the base weights")


class AdditiveDelta(nn.Module):
    """A parametrization ``W -> W + delta()`` whose delta comes from a :class:`MethodLayer`.

    Used for host parameters that forward hooks cannot reach (``nn.MultiheadAttention.in_proj_weight``). The delta
    function's module is held without registering it, so its parameters keep their place in ``host.petl``.
    """

    def __init__(self, layer: MethodLayer, delta: Callable[[], torch.Tensor]) -> None:
        super().__init__()
        object.__setattr__(self, "_layer", layer)
        object.__setattr__(self, "_delta", delta)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        layer = self._layer
        if not layer.active or layer.merged:
            return weight
        return weight + self._delta().to(weight.dtype)


def add_param_delta(host: nn.Module, param_name: str, layer: MethodLayer, delta: Callable[[], torch.Tensor]) -> None:
    """Make ``host.<param_name>`` read as ``original + delta()`` while ``layer`` is active."""
    if not parametrize.is_parametrized(host, param_name):
        host.__dict__.setdefault("_petl_param_order", {})[param_name] = list(host._parameters)
    parametrize.register_parametrization(host, param_name, AdditiveDelta(layer, delta), unsafe=True)


def remove_param_delta(host: nn.Module, param_name: str, layer: MethodLayer) -> None:
    """Remove the :class:`AdditiveDelta` of ``layer`` from ``host.<param_name>``, keeping the original values."""
    plist = host.parametrizations[param_name]
    keep = [p for p in plist if not (isinstance(p, AdditiveDelta) and p._layer is layer)]
    order = host.__dict__.get("_petl_param_order", {}).get(param_name)
    parametrize.remove_parametrizations(host, param_name, leave_parametrized=False)
    if not keep and order is not None:
        # put the parameter back at its original position so the state_dict order is the original one
        params = host._parameters
        host._parameters = {k: params[k] for k in order if k in params} | {
            k: v for k, v in params.items() if k not in order}
    for p in keep:
        parametrize.register_parametrization(host, param_name, p, unsafe=True)
