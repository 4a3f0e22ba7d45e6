"""Running the frozen backbone for a side network: no autograd graph, hidden states via forward hooks.

UniPT's memory saving comes from never back-propagating through the backbone: VSE-infty and CLIP4Clip call it under
``torch.no_grad()`` (``lib/encoders.py:EncoderText.forward``, ``EncoderImageFull.forward``), so none of its
activations are saved for backward; only the side network's own tensors (including its copies of the hidden states
it consumes) are.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

R = TypeVar("R")


def run_frozen(backbone_fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
    """Call ``backbone_fn(*args, **kwargs)`` under ``torch.no_grad()`` and return its result (e.g. the features).

    No activation of the backbone is saved for backward and its parameters get no ``.grad``. Whether the backbone
    is in eval mode (frozen BatchNorm statistics, no dropout) is the caller's choice; see :func:`freeze`.
    """
    with torch.no_grad():
        return backbone_fn(*args, **kwargs)


def freeze(module: nn.Module, *, eval_mode: bool = True) -> nn.Module:
    """``requires_grad_(False)`` on every parameter of ``module`` and (by default) put it in eval mode."""
    module.requires_grad_(False)
    if eval_mode:
        module.eval()
    return module


def _first_tensor(output: Any) -> Tensor:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, tuple | list) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(f"cannot take a hidden state from a layer output of type {type(output).__name__}")


@contextlib.contextmanager
def collect_hidden_states(
    module: nn.Module,
    layer_modules: Sequence[nn.Module | str],
    *,
    include_input: bool = False,
    select: Callable[[Any], Tensor] = _first_tensor,
) -> Iterator[list[Tensor]]:
    """Collect the outputs of ``layer_modules`` (modules or dotted names inside ``module``) during a forward.

    Yields a list filled, in call order, with ``select(output)`` of each layer (default: the output tensor, or the
    first element of a tuple output). With ``include_input`` the input of the first layer comes first (e.g. the
    embedding output, giving BERT's 13 hidden states from its 12 layers). The hooks are removed on exit::

        with collect_hidden_states(bert, [f"encoder.layer.{i}" for i in range(12)], include_input=True) as states:
            run_frozen(bert, input_ids, attention_mask=mask)
        side(states, lengths=lengths)
    """
    layers = [module.get_submodule(m) if isinstance(m, str) else m for m in layer_modules]
    if not layers:
        raise ValueError("collect_hidden_states: layer_modules is empty; expected at least one layer")
    states: list[Tensor] = []
    handles = []

    def pre_hook(_mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        first = args[0] if args else next(iter(kwargs.values()), None)
        states.append(select((first,)))

    def hook(_mod: nn.Module, _args: Any, output: Any) -> None:
        states.append(select(output))

    try:
        if include_input:
            handles.append(layers[0].register_forward_pre_hook(pre_hook, with_kwargs=True))
        handles.extend(layer.register_forward_hook(hook) for layer in layers)
        yield states
    finally:
        for handle in handles:
            handle.remove()
