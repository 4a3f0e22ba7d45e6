"""Prefix tuning layers: per-attention key/value prefixes.

For an attention with queries ``Q``, keys ``K`` and values ``V`` (per head, ``S`` real positions), prefix tuning
(Li & Liang 2021) attends over ``L`` extra trainable positions::

    head_h = softmax(Q_h [P_k,h ; K_h]^T * scale + [0 ; mask]) [P_v,h ; V_h]

with ``P_k, P_v`` of shape ``(L, H * head_dim)`` produced per layer by

* ``reparameterization="none"``: direct parameters ``prefix_key``, ``prefix_value`` (N(0, 1) init, as
  ``nn.Embedding``);
* ``reparameterization="mlp"``: ``[P_k | P_v] = W_2 act(W_1 E + b_1) + b_2`` with ``E`` = ``Embedding(L, d)``,
  ``W_1``: ``d -> proj``, ``W_2``: ``proj -> 2 d`` (one MLP per layer), or, with ``share_mlp`` (OFA's
  ``PromptEncoder``), one MLP per stack whose ``W_2`` maps to ``layers * 2 d``; layer ``i`` uses output rows
  ``[2 i d, 2 (i + 1) d)``, first ``d`` = keys, next ``d`` = values -- OFA's ``view(B, L, layers * 2, H, hd)
  .permute(2, 0, 3, 1, 4).split(2)`` (TencentARC/pi-Tuning ``OFA/models/ofa/unify_transformer.py:PromptEncoder``,
  ``get_encoder_prompt``);
* ``space="hidden"`` (Uni-Perceiver deep prompts, ``uniperceiver/modeling/layers/transformer_encoder_layer.py``):
  ``L`` hidden-space tokens ``P`` (``Embedding(L, d)`` weights) per layer, ``P_k = W_k norm(P) + b_k``,
  ``P_v = W_v norm(P) + b_v`` with the layer's frozen key/value projections (and its ``norm1`` in pre-LN layers).

Dropout (OFA: 0.2) acts on the prefix keys/values of each batch element. The prefix is never masked; T5's relative
position bias is zero for prefix keys (as OFA adds its attention bias to the real keys only). Prefix tuning is NOT
the identity at initialisation: the base model's outputs change as soon as a prefix is attached.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from peft_core.attention import AttentionSite, KVExtension, disable_interception, enable_interception
from peft_core.layer import MethodLayer
from peft_core.targeting import TargetError
from peft_core.tuners.activations import make_activation
from peft_core.tuners.prefix.config import PrefixConfig


class PrefixMLP(nn.Module):
    """The reparameterisation ``out = W_2 act(W_1 E + b_1) + b_2``: ``Embedding(L, d) -> Linear(d, proj) -> act ->
    Linear(proj, out)`` (OFA ``PromptEncoder`` with projection; VL-Adapter ``InputPrompts``).

    :meth:`forward` returns rows ``rows`` of the output features for all ``L`` positions, ``(L, len(rows))``.
    """

    def __init__(self, num_tokens: int, dim: int, proj_dim: int, out_features: int, activation: str) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_tokens, dim)
        self.proj_in = nn.Linear(dim, proj_dim)
        self.act = make_activation(activation)
        self.proj_out = nn.Linear(proj_dim, out_features)

    def forward(self, rows: slice | None = None) -> torch.Tensor:
        hidden = self.act(self.proj_in(self.embedding.weight))
        if rows is None:
            return self.proj_out(hidden)
        bias = self.proj_out.bias[rows] if self.proj_out.bias is not None else None
        return F.linear(hidden, self.proj_out.weight[rows], bias)


class PrefixLayer(MethodLayer, KVExtension):
    """Key/value prefix of one attention module (a :class:`~peft_core.attention.KVExtension`)::

        head_h = softmax(Q_h [P_k,h ; K_h]^T * scale + [0 ; mask]) [P_v,h ; V_h]
        none:    P_k, P_v parameters (L, key_dim), (L, value_dim)
        mlp:     [P_k | P_v] = W_2 act(W_1 E + b_1) + b_2            (rows [i 2d, (i+1) 2d) of a shared W_2)
        hidden:  P_k = W_k norm(P) + b_k,  P_v = W_v norm(P) + b_v   (the host's frozen projections)

    Li & Liang 2021; OFA ``PromptEncoder`` / ``get_encoder_prompt`` (TencentARC/pi-Tuning
    ``OFA/models/ofa/unify_transformer.py``); Uni-Perceiver ``DeepPrompt`` (``transformer_encoder_layer.py``).

    Args:
        site: the host's :class:`~peft_core.attention.AttentionSite` (widths and projections).
        config: the :class:`PrefixConfig`.
        shared: with ``share_mlp``, the stack's :class:`PrefixMLP`; ``index`` is this layer's position in the stack
            and ``owns_shared`` registers the MLP here (the stack's first layer), so it is saved and trained once.
        hidden_norm: ``space="hidden"``: the base model's normalisation applied to the prompts (not an adapter
            parameter).
    """

    def __init__(self, site: AttentionSite, config: PrefixConfig, *, shared: PrefixMLP | None = None, index: int = 0,
                 owns_shared: bool = False, hidden_norm: nn.Module | None = None) -> None:
        super().__init__()
        num = config.num_virtual_tokens
        self.num_virtual_tokens = num
        self.space = config.space
        self.key_dim, self.value_dim = site.key_dim, site.value_dim
        self.dropout = nn.Dropout(config.dropout)
        self.index = index
        object.__setattr__(self, "_hidden_norm", hidden_norm)
        object.__setattr__(self, "_shared", None)
        if config.space == "hidden":
            if site.key_input_dim != site.value_input_dim:
                raise TargetError(f"space='hidden' needs equal key and value input widths, got "
                                  f"{site.key_input_dim} and {site.value_input_dim}")
            self.prompt = nn.Parameter(torch.randn(num, site.key_input_dim))
        elif config.reparameterization == "none":
            self.prefix_key = nn.Parameter(torch.randn(num, site.key_dim))
            self.prefix_value = nn.Parameter(torch.randn(num, site.value_dim))
        elif shared is None:
            self.mlp = PrefixMLP(num, site.key_input_dim, config.mlp_width(site.key_input_dim),
                                 site.key_dim + site.value_dim, config.activation)
        else:
            if owns_shared:
                self.shared_mlp = shared
            object.__setattr__(self, "_shared", shared)

    # ------------------------------------------------------------------------------------------------ hooks
    def attach(self, host: nn.Module) -> None:
        enable_interception(host)

    def detach(self, host: nn.Module) -> None:
        disable_interception(host)

    # ------------------------------------------------------------------------------------------------ prefix
    def raw_kv(self, site: AttentionSite) -> tuple[torch.Tensor, torch.Tensor]:
        """The prefix keys ``(L, key_dim)`` and values ``(L, value_dim)`` before dropout."""
        if self.space == "hidden":
            prompt = self.prompt if self._hidden_norm is None else self._hidden_norm(self.prompt)
            key, value = site.project_kv(prompt[None])
            return key[0], value[0]
        if "prefix_key" in self._parameters:
            return self.prefix_key, self.prefix_value
        width = self.key_dim + self.value_dim
        if self._shared is not None:
            flat = self._shared(slice(self.index * width, (self.index + 1) * width))
        else:
            flat = self.mlp()
        return flat[:, : self.key_dim], flat[:, self.key_dim :]

    def extra_kv(self, site: AttentionSite, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        key, value = self.raw_kv(site)
        key = key[None].expand(batch_size, -1, -1)
        value = value[None].expand(batch_size, -1, -1)
        if self.training and self.dropout.p > 0:
            key, value = self.dropout(key), self.dropout(value)
        return key, value

    def collapse(self, site: AttentionSite) -> None:
        """Replace the MLP reparameterisation by the direct prefix it currently produces (inference form)."""
        if self.space == "hidden" or "prefix_key" in self._parameters:
            return
        with torch.no_grad():
            key, value = (t.detach().clone() for t in self.raw_kv(site))
        for name in ("mlp", "shared_mlp"):
            if name in self._modules:
                del self._modules[name]
        object.__setattr__(self, "_shared", None)
        self.prefix_key = nn.Parameter(key)
        self.prefix_value = nn.Parameter(value)
