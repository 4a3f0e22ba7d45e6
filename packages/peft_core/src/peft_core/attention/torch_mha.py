"""``nn.MultiheadAttention`` with extra key/value positions, computed from the module's own parameters.

    q = x_q W_q^T + b_q,  k = x_k W_k^T + b_k,  v = x_v W_v^T + b_v          (in_proj_weight / q,k,v_proj_weight)
    K' = [K_extra ; k],  V' = [V_extra ; v]   (per head)
    out = out_proj( softmax(q K'^T / sqrt(head_dim) + [0 ; mask]) V' )

``mask`` merges ``attn_mask`` ((L, S), (1, L, S) or (B * heads, L, S); boolean ``True`` = blocked, or additive
float) and ``key_padding_mask`` ((B, S)), as ``F.multi_head_attention_forward`` does. Batched inputs with
``batch_first`` either way, unbatched inputs, and the nested tensors ``nn.TransformerEncoder`` builds in inference are
supported. With ``need_weights=True`` the returned weights have ``P + S`` key columns (post-dropout, averaged over
heads unless ``average_attn_weights=False``), as the stock module returns post-dropout weights.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from peft_core.attention.intercept import _host_state, gather_extra_kv, split_heads
from peft_core.attention.masks import mha_additive_mask, pad_attention_mask
from peft_core.attention.sites import mha_projections


def intercepted_forward(self: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                        attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                        is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Instance ``forward`` installed by :func:`~peft_core.attention.enable_interception` (same signature as
    ``nn.MultiheadAttention.forward``); the stock forward runs when no extension is active."""
    state = _host_state(self)
    batch = _batch_size(self, query)
    extra = gather_extra_kv(self, state.site, batch) if state is not None else None
    if extra is None:
        return nn.MultiheadAttention.forward(
            self, query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
            attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal,
        )
    return mha_forward_with_extra(self, extra, query, key, value, key_padding_mask, need_weights, attn_mask,
                                  average_attn_weights, is_causal)


def _batch_size(mha: nn.MultiheadAttention, query: torch.Tensor) -> int:
    if query.is_nested:
        return query.size(0)
    if query.dim() == 2:
        return 1
    return query.shape[0] if mha.batch_first else query.shape[1]


def mha_forward_with_extra(mha: nn.MultiheadAttention, extra: tuple[torch.Tensor, torch.Tensor],
                           query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                           attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                           is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Multi-head attention of ``mha`` with ``extra`` = flat ``(B, P, embed_dim)`` keys and values prepended."""
    if is_causal and attn_mask is None:
        raise RuntimeError("Need attn_mask if specifying the is_causal hint (as nn.MultiheadAttention requires)")
    lengths: list[int] | None = None
    if query.is_nested:
        if key is not query or value is not query or key_padding_mask is not None or attn_mask is not None:
            raise ValueError("nested-tensor input is supported for unmasked self-attention only "
                             "(key is value is query)")
        lengths = [t.shape[0] for t in query.unbind()]
        query = query.to_padded_tensor(0.0)
        key = value = query
        positions = torch.arange(query.shape[1], device=query.device)
        key_padding_mask = positions[None, :] >= torch.tensor(lengths, device=query.device)[:, None]
    is_batched = query.dim() == 3
    if not is_batched:
        query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
    elif not mha.batch_first and lengths is None:
        query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)

    batch, q_length, embed = query.shape
    kv_length = key.shape[1]
    heads = mha.num_heads
    head_dim = embed // heads
    w_q, w_k, w_v, b_q, b_k, b_v = mha_projections(mha)
    q = F.linear(query, w_q, b_q).view(batch, q_length, heads, head_dim).transpose(1, 2)
    k = F.linear(key, w_k, b_k).view(batch, kv_length, heads, head_dim).transpose(1, 2)
    v = F.linear(value, w_v, b_v).view(batch, kv_length, heads, head_dim).transpose(1, 2)
    extra_k, extra_v = extra
    num_prefix = extra_k.shape[1]
    k = torch.cat([split_heads(extra_k.to(k.dtype), heads, head_dim), k], dim=2)
    v = torch.cat([split_heads(extra_v.to(v.dtype), heads, head_dim), v], dim=2)

    mask = mha_additive_mask(attn_mask, key_padding_mask, batch, heads, q_length, kv_length, q.dtype)
    if mask is not None:
        mask = pad_attention_mask(mask, num_prefix, kv_length)
    dropout_p = mha.dropout if mha.training else 0.0
    if need_weights:
        scores = (q * head_dim**-0.5) @ k.transpose(-2, -1)
        if mask is not None:
            scores = scores + mask
        weights = scores.softmax(dim=-1)
        if dropout_p > 0.0:
            weights = F.dropout(weights, p=dropout_p)
        out = weights @ v
        if average_attn_weights:
            weights = weights.mean(dim=1)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        weights = None
    out = out.transpose(1, 2).reshape(batch, q_length, embed)
    out = F.linear(out, mha.out_proj.weight, mha.out_proj.bias)

    if lengths is not None:
        return torch.nested.as_nested_tensor([out[i, :n] for i, n in enumerate(lengths)]), None
    if not is_batched:
        return out.squeeze(0), (weights.squeeze(0) if weights is not None else None)
    if not mha.batch_first:
        out = out.transpose(0, 1)
    return out, weights

