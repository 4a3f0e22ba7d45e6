"""Attention interception: the extension point for methods that add key/value positions to an attention.

A method that prepends keys and values (prefix tuning, Uni-Perceiver deep prompts, ...) writes a layer that
subclasses both :class:`~peft_core.layer.MethodLayer` and :class:`KVExtension`::

    class MyLayer(MethodLayer, KVExtension):
        def attach(self, host):
            self.site = enable_interception(host)        # AttentionSite: widths, key/value projections
        def detach(self, host):
            disable_interception(host)
        def extra_kv(self, site, batch_size):           # (B, P, site.key_dim), (B, P, site.value_dim)
            ...

and every forward of the host then attends over ``[extra ; real]`` keys and values with the masks (and T5's
``position_bias``) extended by valid positions. Supported hosts: transformers attention modules running ``eager`` or
``sdpa`` (BERT, RoBERTa, BART, T5, CLIP, ViT and modules built the same way) and ``torch.nn.MultiheadAttention``.
See :mod:`peft_core.attention.intercept` for how each is reached and what is restored on release.
"""

from peft_core.attention.intercept import (
    KEY_PREFIX,
    KVExtension,
    active_extensions,
    disable_interception,
    enable_interception,
    extend_attention_inputs,
    gather_extra_kv,
    is_intercepted,
    original_implementation,
    site_of,
    split_heads,
)
from peft_core.attention.masks import causal_prefix_mask, mha_additive_mask, pad_attention_mask
from peft_core.attention.sites import (
    SUPPORTED_IMPLEMENTATIONS,
    AttentionSite,
    describe_attention,
    is_attention,
    mha_projections,
)
from peft_core.attention.torch_mha import mha_forward_with_extra

__all__ = [
    "KEY_PREFIX",
    "SUPPORTED_IMPLEMENTATIONS",
    "AttentionSite",
    "KVExtension",
    "active_extensions",
    "causal_prefix_mask",
    "describe_attention",
    "disable_interception",
    "enable_interception",
    "extend_attention_inputs",
    "gather_extra_kv",
    "is_attention",
    "is_intercepted",
    "mha_additive_mask",
    "mha_forward_with_extra",
    "mha_projections",
    "original_implementation",
    "pad_attention_mask",
    "site_of",
    "split_heads",
]
