"""Residual sublayers of encoder-decoder transformers, and a method layer that rewrites a sublayer's output from its
input.

A *sublayer* is the part of a transformer layer between two residual additions. Methods such as VL-PET need both its
input ``X`` (the residual stream entering it) and its output ``H`` (before the residual addition), which no single
module sees together. A sublayer is therefore described by three modules of the unmodified model:

* ``entry``: the module whose (primary) input is X; a forward pre-hook captures it;
* ``exit``: the module whose (primary) output is H; a forward hook replaces it by ``transform(X, H, valid)``;
* ``mask_source``: the encoder layer, whose ``attention_mask`` argument tells which positions are padding
  (``valid``: (B, L) bool, or ``None`` when the mask is absent, i.e. no padding).

============  ===============================  ===================  =================================
family        sublayer                         entry                exit
============  ===============================  ===================  =================================
BART          self-attention (post-LN)         ``self_attn``        ``self_attn``
BART          FFN (post-LN)                    ``fc1``              ``fc2``
T5            self-attention (pre-LN)          ``layer.0``          ``layer.0.SelfAttention``
T5            FFN (pre-LN)                     ``layer.-1``         ``layer.-1.DenseReluDense``
============  ===============================  ===================  =================================

For BART, X is the previous LayerNorm's output and the model goes on with ``LN(X + dropout(H_new))``; for T5, X is the
pre-LN residual stream and the model goes on with ``X + dropout(H_new)``.

The padding mask is kept from the encoder layer's pre-hook until that layer runs again (the layer's hook sits
outside a gradient-checkpointed forward, so a recomputation inside backward still finds it); the captured X is
released as soon as the exit hook has used it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from peft_core.layer import MethodLayer, map_primary_output, primary_input


@dataclass(frozen=True)
class Sublayer:
    """One residual sublayer of an encoder layer (see the module docstring)."""

    kind: str
    host_name: str
    entry: nn.Module
    exit: nn.Module
    mask_source: nn.Module
    dim: int


@dataclass(frozen=True)
class EncoderDecoderLayout:
    """Where the VL-PET hosts are in a BART- or T5-like encoder-decoder."""

    family: str
    encoder_layers: list[tuple[str, dict[str, Sublayer]]]
    value_projections: list[tuple[str, nn.Linear]]
    encoder_norms: list[tuple[str, nn.Module]]


def attention_mask_argument(args: tuple, kwargs: dict) -> Any:
    """The ``attention_mask`` an encoder layer was called with (keyword, else the second positional argument)."""
    if "attention_mask" in kwargs:
        return kwargs["attention_mask"]
    return args[1] if len(args) > 1 else None


def valid_positions(mask: Any, length: int) -> torch.Tensor | None:
    """Key positions that are not padding, as a (B, L) (or (1, L)) bool tensor; ``None`` when ``mask`` is ``None``.

    Accepts the masks transformers hands to an attention layer: 4D ``(B, 1|H, Lq, Lk)`` or 3D additive float masks
    (0 = attend, the dtype's minimum or -inf = masked), bool masks (True = attend), and 2D ``(B, L)`` keep masks
    (1 / True = token, 0 = padding). A key position is valid if any query may attend to it.

    Raises:
        TypeError: the mask is not a tensor (e.g. a flex-attention ``BlockMask``).
        ValueError: the mask's key length differs from ``length``.
    """
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(
            f"cannot read padding from an attention mask of type {type(mask).__name__}; expected a tensor "
            "(use attn_implementation 'eager' or 'sdpa', or small_gate_mean='upstream')"
        )
    if mask.dtype == torch.bool:
        keep = mask
    elif mask.is_floating_point():
        keep = mask > 0.5 if mask.dim() == 2 else mask > torch.finfo(mask.dtype).min / 2
    else:
        keep = mask != 0
    while keep.dim() > 2:
        keep = keep.any(dim=1)
    if keep.dim() != 2 or keep.shape[-1] != length:
        raise ValueError(
            f"attention mask of shape {tuple(mask.shape)} does not cover the {length} positions of the sublayer; "
            "expected (B, L), (B, Lq, L) or (B, 1, Lq, L)"
        )
    return keep


class SublayerLayer(MethodLayer):
    """A method layer living at a sublayer's ``exit`` module that replaces H by ``transform(X, H, valid)``.

    Subclasses implement :meth:`transform`. ``needs_mask`` registers the pre-hook on the encoder layer that reads
    the padding mask; without it ``valid`` is always ``None``. The entry and mask-source modules are held without
    being registered, so their parameters never count as the layer's.
    """

    def __init__(self, sublayer: Sublayer, *, needs_mask: bool = False) -> None:
        super().__init__()
        object.__setattr__(self, "_entry", sublayer.entry)
        object.__setattr__(self, "_mask_source", sublayer.mask_source if needs_mask else None)
        self.kind = sublayer.kind
        self._x: torch.Tensor | None = None
        self._valid: torch.Tensor | None = None
        self._extra_handles: list[RemovableHandle] = []

    def transform(self, x: torch.Tensor, h: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------------ hooks
    def attach(self, host: nn.Module) -> None:
        if self._mask_source is not None:
            self._extra_handles.append(
                self._mask_source.register_forward_pre_hook(self._capture_mask, with_kwargs=True))
        self._extra_handles.append(self._entry.register_forward_pre_hook(self._capture_input, with_kwargs=True))
        self._handles.append(host.register_forward_hook(self._post_hook, with_kwargs=True))

    def detach(self, host: nn.Module) -> None:
        super().detach(host)
        for handle in self._extra_handles:
            handle.remove()
        self._extra_handles.clear()
        self._x = None
        self._valid = None

    def _capture_mask(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if not self.active or self.merged:
            return
        x = primary_input(args, kwargs)
        self._valid = valid_positions(attention_mask_argument(args, kwargs), x.shape[-2])

    def _capture_input(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if not self.active or self.merged:
            return
        self._x = primary_input(args, kwargs)

    def post(self, host: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        x, self._x = self._x, None
        if x is None:
            raise RuntimeError(
                f"{type(self).__name__} ({self.kind}): the sublayer's exit module ran without its entry module "
                "running first; the model does not call its sublayer as expected"
            )
        return map_primary_output(output, lambda h: self.transform(x, h, self._valid))


# ----------------------------------------------------------------------------------------- architecture layouts
def _module_dim(module: nn.Module) -> int:
    for attr in ("embed_dim", "d_model", "in_features"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    raise ValueError(f"cannot tell the hidden size of a {type(module).__name__}")


def _is_norm(module: nn.Module) -> bool:
    name = type(module).__name__
    return isinstance(module, nn.LayerNorm) or name == "T5LayerNorm" or "RMSNorm" in name


def _norms_under(model: nn.Module, stack_names: list[str]) -> list[tuple[str, nn.Module]]:
    out = []
    for name, module in model.named_modules():
        if ".petl." in f".{name}." or not _is_norm(module):
            continue
        if any(name.startswith(stack + ".") for stack in stack_names):
            out.append((name, module))
    return out


def encoder_decoder_layout(model: nn.Module) -> EncoderDecoderLayout | None:
    """The encoder sublayers, decoder cross-attention value projections and encoder norms of a BART- or T5-like
    model (transformers ``Bart*`` / ``MBart*`` / ``T5*``), or ``None`` if the model has neither structure."""
    encoder: list[tuple[str, dict[str, Sublayer]]] = []
    values: list[tuple[str, nn.Linear]] = []
    family = None
    for name, module in model.named_modules():
        if ".petl." in f".{name}.":
            continue
        cls = type(module).__name__
        if cls.endswith("EncoderLayer") and all(hasattr(module, a) for a in ("self_attn", "fc1", "fc2")):
            family = family or "bart"
            d = _module_dim(module.self_attn)
            encoder.append((name, {
                "attn": Sublayer("attn", f"{name}.self_attn", module.self_attn, module.self_attn, module, d),
                "ffn": Sublayer("ffn", f"{name}.fc2", module.fc1, module.fc2, module, d),
            }))
        elif cls.endswith("DecoderLayer") and isinstance(getattr(getattr(module, "encoder_attn", None), "v_proj",
                                                                 None), nn.Linear):
            values.append((f"{name}.encoder_attn.v_proj", module.encoder_attn.v_proj))
        elif cls == "T5Block":
            family = family or "t5"
            first, last = module.layer[0], module.layer[-1]
            if not module.is_decoder:
                d = _module_dim(first.SelfAttention)
                idx = len(module.layer) - 1
                encoder.append((name, {
                    "attn": Sublayer("attn", f"{name}.layer.0.SelfAttention", first, first.SelfAttention, module, d),
                    "ffn": Sublayer("ffn", f"{name}.layer.{idx}.DenseReluDense", last, last.DenseReluDense, module,
                                    d),
                }))
            elif len(module.layer) == 3:
                values.append((f"{name}.layer.1.EncDecAttention.v", module.layer[1].EncDecAttention.v))
    if family is None:
        return None
    stacks = sorted({block.rsplit(".", 2)[0] for block, _ in encoder if block.count(".") >= 2})
    return EncoderDecoderLayout(family, encoder, values, _norms_under(model, stacks))
