"""Per-forward routing inputs of the conditional MoE, and the collection of its auxiliary losses.

    with moe_routing(model, attributes=torch.stack([image_attr, text_attr]), segment_lengths=[197, 30]):
        out = model(tokens)            # the first 197 tokens routed by image_attr, the next 30 by text_attr
    loss = task_loss + 0.01 * moe_aux_loss(model)      # token routing only

Upstream Uni-Perceiver passes ``moe_embedding`` (one attribute row per modality) and
``sample_info['data_cum_length']`` through every layer's ``**kwargs``; here they are set on the MoE layers for the
duration of the block instead, so the model's own forward signature is untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from peft_core.model import iter_layers
from peft_core.tuners.moe.layer import MoeLayer


@dataclass(frozen=True)
class MoeRouting:
    """Routing inputs for one forward.

    Attributes:
        attributes: (S, attribute_length) float tensor, one attribute vector per segment (attribute routing).
        segment_lengths: S token counts along the layers' ``seq_dim`` (required when S > 1).
        token_mask: bool tensor with the shape of the MoE input without its feature axis, True for real tokens; the
            load-balancing loss of token routing ignores the others.
        pe_length: prompt tokens prepended to the key/value stream; added to the first segment in mode ``'kv'``.
    """

    attributes: torch.Tensor | None = None
    segment_lengths: tuple[int, ...] | None = None
    token_mask: torch.Tensor | None = None
    pe_length: int = 0


def _moe_layers(model: nn.Module, name: str | None, prefix: str | None) -> list[tuple[str, MoeLayer]]:
    layers = [(h, layer) for h, _, layer in iter_layers(model, name) if isinstance(layer, MoeLayer)]
    if prefix is not None:
        layers = [(h, layer) for h, layer in layers if h == prefix or h.startswith(prefix + ".")]
    if not layers:
        raise ValueError(f"no MoE layer found on this model (adapter name={name!r}, prefix={prefix!r})")
    return layers


def make_routing(attributes: torch.Tensor | Sequence[float] | Sequence[Sequence[float]] | None = None,
                 segment_lengths: Sequence[int] | None = None, *, token_mask: torch.Tensor | None = None,
                 pe_length: int = 0, attribute_length: int | None = None) -> MoeRouting:
    """Validate and build a :class:`MoeRouting` (a 1-D attribute vector is one segment)."""
    attrs = None
    if attributes is not None:
        attrs = torch.as_tensor(attributes, dtype=torch.float32) if not isinstance(attributes, torch.Tensor) \
            else attributes.detach().float()
        if attrs.dim() == 1:
            attrs = attrs[None]
        if attrs.dim() != 2 or attrs.shape[0] < 1:
            raise ValueError(f"attributes of shape {tuple(attrs.shape)} are not allowed; expected (segments, "
                             "attribute_length) or one vector")
        if attribute_length is not None and attrs.shape[1] != attribute_length:
            raise ValueError(f"attributes of shape {tuple(attrs.shape)} are not allowed; expected vectors of "
                             f"attribute_length={attribute_length}")
    lengths = None
    if segment_lengths is not None:
        lengths = tuple(int(n) for n in segment_lengths)
        if any(n < 0 for n in lengths) or not lengths:
            raise ValueError(f"segment_lengths={list(segment_lengths)} is not allowed; expected non-negative counts")
        if attrs is not None and len(lengths) != attrs.shape[0]:
            raise ValueError(f"segment_lengths={list(lengths)} is not allowed; expected {attrs.shape[0]} lengths, one "
                             "per attribute vector")
    elif attrs is not None and attrs.shape[0] > 1:
        raise ValueError(f"segment_lengths=None is not allowed with {attrs.shape[0]} attribute vectors; expected one "
                         "length per segment")
    if not isinstance(pe_length, int) or pe_length < 0:
        raise ValueError(f"pe_length={pe_length!r} is not allowed; expected an integer >= 0")
    if token_mask is not None:
        token_mask = token_mask.bool()
    return MoeRouting(attrs, lengths, token_mask, pe_length)


def set_moe_routing(model: nn.Module, attributes: torch.Tensor | Sequence | None = None,
                    segment_lengths: Sequence[int] | None = None, *, token_mask: torch.Tensor | None = None,
                    pe_length: int = 0, name: str | None = None,
                    prefix: str | None = None) -> dict[MoeLayer, MoeRouting | None]:
    """Set the routing inputs of the MoE layers of adapter ``name`` (all if None) whose host name starts with
    ``prefix`` (all if None) until changed; returns the previous values (for :func:`restore_moe_routing`)."""
    layers = _moe_layers(model, name, prefix)
    previous: dict[MoeLayer, MoeRouting | None] = {}
    built: dict[int, MoeRouting] = {}
    for _, layer in layers:
        length = layer.attribute_length if layer.routing_kind == "attribute" else None
        if length not in built:
            built[length] = make_routing(attributes if layer.routing_kind == "attribute" else None, segment_lengths,
                                         token_mask=token_mask, pe_length=pe_length, attribute_length=length)
        previous[layer] = layer.routing
    for _, layer in layers:
        layer.routing = built[layer.attribute_length if layer.routing_kind == "attribute" else None]
        layer.group.reset()
    return previous


def restore_moe_routing(previous: dict[MoeLayer, MoeRouting | None]) -> None:
    for layer, routing in previous.items():
        layer.routing = routing
        layer.group.reset()


@contextlib.contextmanager
def moe_routing(model: nn.Module, attributes: torch.Tensor | Sequence | None = None,
                segment_lengths: Sequence[int] | None = None, *, token_mask: torch.Tensor | None = None,
                pe_length: int = 0, name: str | None = None, prefix: str | None = None) -> Iterator[None]:
    """Route the forwards run inside the block with these inputs (see :class:`MoeRouting`); nests, and restores
    the previous routing on exit. ``prefix`` restricts it to the hosts under one module (e.g. ``"decoder"``)."""
    previous = set_moe_routing(model, attributes, segment_lengths, token_mask=token_mask, pe_length=pe_length,
                               name=name, prefix=prefix)
    try:
        yield
    finally:
        restore_moe_routing(previous)


def moe_aux_losses(model: nn.Module, name: str | None = None, *, clear: bool = True) -> dict[str, torch.Tensor]:
    """The load-balancing losses of the last forward, by the host name of each gate owner (token routing only).

    With ``clear`` they are forgotten afterwards, so a later call never returns a loss from an older forward."""
    out: dict[str, torch.Tensor] = {}
    for host_name, _, layer in iter_layers(model, name):
        if isinstance(layer, MoeLayer) and layer.last_aux_loss is not None:
            out[host_name] = layer.last_aux_loss
            if clear:
                layer.last_aux_loss = None
    return out


def moe_aux_loss(model: nn.Module, name: str | None = None, *, clear: bool = True) -> torch.Tensor:
    """Sum over gates of :func:`moe_aux_losses` (a zero scalar when there is none)."""
    losses = list(moe_aux_losses(model, name, clear=clear).values())
    if not losses:
        return torch.zeros(())
    return torch.stack([loss.float() for loss in losses]).sum()
