"""What peft_core knows about an attention module it can intercept: an :class:`AttentionSite`.

Two kinds of hosts are supported:

* ``"transformers"``: a Hugging Face attention module (BERT / RoBERTa ``*SelfAttention`` and ``*CrossAttention``,
  ``BartAttention``, ``T5Attention``, ``CLIPAttention``, ``ViTAttention`` and any module built the same way) that
  owns a ``config`` with ``_attn_implementation`` in :data:`SUPPORTED_IMPLEMENTATIONS`, key and value ``nn.Linear``
  children named ``k_proj``/``key``/``k`` and ``v_proj``/``value``/``v``, and calls
  ``ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, eager_attention_forward)`` with ``q``, ``k``,
  ``v`` shaped ``(B, heads, length, head_dim)``;
* ``"torch_mha"``: ``torch.nn.MultiheadAttention`` (``batch_first`` either way, without ``add_bias_kv`` /
  ``add_zero_attn``).

Nothing here changes the module; :func:`describe_attention` only inspects it and raises
:class:`~peft_core.targeting.TargetError` with the reason when the module cannot be intercepted.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from peft_core.targeting import TargetError

SUPPORTED_IMPLEMENTATIONS = ("eager", "sdpa")
"""``config._attn_implementation`` values an intercepted transformers attention may use (flash and flex kernels take
masks peft_core cannot extend exactly)."""

KEY_NAMES = ("k_proj", "key", "k")
VALUE_NAMES = ("v_proj", "value", "v")


@dataclass(eq=False)
class AttentionSite:
    """An interceptable attention module and its key/value geometry.

    Attributes:
        module: the attention module.
        kind: ``"transformers"`` or ``"torch_mha"``.
        key_input_dim / value_input_dim: features entering the key / value projections (the model width).
        key_dim / value_dim: features leaving them (all heads concatenated); extra keys / values contributed by a
            :class:`~peft_core.attention.KVExtension` have these widths.
    """

    module: nn.Module
    kind: str
    key_input_dim: int
    value_input_dim: int
    key_dim: int
    value_dim: int
    key_proj: nn.Module | None = None
    value_proj: nn.Module | None = None

    def project_kv(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Project hidden-space tokens ``(B, P, d)`` with the module's own (frozen) key and value projections.

        Returns flat ``(B, P, key_dim)`` and ``(B, P, value_dim)``. For a transformers host the projection modules are
        called, so hooks on them (e.g. LoRA) apply as they do to the real tokens.
        """
        if self.kind == "transformers":
            return self.key_proj(hidden), self.value_proj(hidden)
        _, w_k, w_v, _, b_k, b_v = mha_projections(self.module)
        return F.linear(hidden, w_k, b_k), F.linear(hidden, w_v, b_v)

    @property
    def attn_implementation(self) -> str | None:
        """The implementation the host ran before interception (``None`` for ``torch_mha``)."""
        if self.kind != "transformers":
            return None
        from peft_core.attention.intercept import original_implementation

        return original_implementation(self.module.config)


def mha_projections(mha: nn.MultiheadAttention) -> tuple[torch.Tensor, ...]:
    """``(W_q, W_k, W_v, b_q, b_k, b_v)`` of an ``nn.MultiheadAttention`` (biases ``None`` without bias); reading the
    attributes goes through any parametrization (e.g. LoRA on ``in_proj_weight``)."""
    d = mha.embed_dim
    if mha._qkv_same_embed_dim:
        w = mha.in_proj_weight
        w_q, w_k, w_v = w[:d], w[d : 2 * d], w[2 * d :]
    else:
        w_q, w_k, w_v = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
    b = mha.in_proj_bias
    if b is None:
        return w_q, w_k, w_v, None, None, None
    return w_q, w_k, w_v, b[:d], b[d : 2 * d], b[2 * d :]


def _child_linear(module: nn.Module, names: tuple[str, ...]) -> nn.Linear | None:
    for name in names:
        child = module._modules.get(name)
        if isinstance(child, nn.Linear):
            return child
    return None


def module_eager_function(module: nn.Module) -> Callable | None:
    """``eager_attention_forward`` of the module's own modeling file (the default its forward passes)."""
    return getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)


def describe_attention(module: nn.Module) -> AttentionSite:
    """The :class:`AttentionSite` of ``module``; raises :class:`TargetError` saying why it is not supported."""
    if isinstance(module, nn.MultiheadAttention):
        if module.bias_k is not None or module.add_zero_attn:
            raise TargetError("nn.MultiheadAttention with add_bias_kv or add_zero_attn is not supported")
        return AttentionSite(module, "torch_mha", module.kdim, module.vdim, module.embed_dim, module.embed_dim)
    config = getattr(module, "config", None)
    if config is None and isinstance(module._modules.get("qkv"), nn.Linear) and hasattr(module, "num_heads"):
        raise TargetError("timm-style attention with a fused qkv projection is not supported (its forward computes "
                          "the attention inline); expected nn.MultiheadAttention or a transformers attention module")
    if config is None or not hasattr(config, "_attn_implementation"):
        raise TargetError(
            "not an attention module peft_core can intercept; expected nn.MultiheadAttention or a transformers "
            "attention module with a `config` (BERT, RoBERTa, BART, T5, CLIP, ViT, ...)"
        )
    key, value = _child_linear(module, KEY_NAMES), _child_linear(module, VALUE_NAMES)
    if key is None or value is None:
        raise TargetError(f"no key/value nn.Linear children named {KEY_NAMES} / {VALUE_NAMES}")
    from peft_core.attention.intercept import original_implementation

    impl = original_implementation(config)
    if impl not in SUPPORTED_IMPLEMENTATIONS:
        raise TargetError(
            f"attn_implementation={impl!r} is not supported; expected one of {list(SUPPORTED_IMPLEMENTATIONS)} "
            "(load the model with attn_implementation='sdpa' or 'eager')"
        )
    if impl == "eager" and module_eager_function(module) is None:
        raise TargetError(f"module file {type(module).__module__} has no eager_attention_forward")
    return AttentionSite(module, "transformers", key.in_features, value.in_features, key.out_features,
                         value.out_features, key, value)


def is_attention(module: nn.Module) -> bool:
    """Whether :func:`describe_attention` accepts ``module``."""
    try:
        describe_attention(module)
    except TargetError:
        return False
    return True
