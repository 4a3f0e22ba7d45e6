"""Mask arithmetic for keys/values prepended to an attention (``P`` extra positions, always valid).

Conventions: a *boolean* transformers mask is ``True`` where attention is allowed (SDPA); a *float* mask is additive
(``0`` allowed, a large negative value blocked). ``nn.MultiheadAttention`` booleans mean the opposite (``True`` =
blocked); :func:`mha_additive_mask` converts them.
"""

from __future__ import annotations

import torch


def pad_attention_mask(mask: torch.Tensor, num_prefix: int, kv_length: int) -> torch.Tensor:
    """Prepend ``num_prefix`` valid key positions to ``mask`` (last dim = keys).

    A boolean mask gets ``True`` columns, a float mask ``0`` columns. A mask whose last dim is 1 broadcasts over the
    keys and is returned as is. Raises ``ValueError`` if the last dim is neither ``kv_length`` nor 1.
    """
    last = mask.shape[-1]
    if last == 1:
        return mask
    if last != kv_length:
        raise ValueError(
            f"attention mask with {last} key positions does not match the {kv_length} keys; expected a mask whose "
            "last dimension is the key length"
        )
    shape = (*mask.shape[:-1], num_prefix)
    if mask.dtype == torch.bool:
        pad = torch.ones(shape, dtype=torch.bool, device=mask.device)
    else:
        pad = torch.zeros(shape, dtype=mask.dtype, device=mask.device)
    return torch.cat([pad, mask], dim=-1)


def causal_prefix_mask(q_length: int, kv_length: int, num_prefix: int, *, device: torch.device,
                       dtype: torch.dtype | None = None) -> torch.Tensor:
    """A ``(1, 1, q, P + kv)`` causal mask whose ``P`` prefix columns are visible to every query.

    Query ``i`` sees key ``j`` iff ``j <= i`` (upper-left alignment: the semantics of SDPA's ``is_causal=True``, which
    the wrapped implementation would have used without the prefix). ``dtype=None`` gives a boolean mask (``True`` =
    allowed), a float dtype an additive mask with ``finfo(dtype).min`` at blocked positions (transformers' eager
    convention).
    """
    allowed = torch.arange(kv_length, device=device)[None, :] <= torch.arange(q_length, device=device)[:, None]
    allowed = torch.cat([torch.ones(q_length, num_prefix, dtype=torch.bool, device=device), allowed], dim=-1)
    allowed = allowed[None, None]
    if dtype is None:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)


def mha_additive_mask(attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None, batch: int, heads: int,
                      q_length: int, kv_length: int, dtype: torch.dtype) -> torch.Tensor | None:
    """Combine ``nn.MultiheadAttention``'s ``attn_mask`` ((L, S), (1, L, S) or (B * heads, L, S)) and
    ``key_padding_mask`` ((B, S)) into one additive float mask broadcastable to ``(B, heads, L, S)``; boolean
    entries ``True`` become ``-inf`` (blocked), float entries are added as given. ``None`` when both are ``None``."""
    out = None
    if attn_mask is not None:
        m = _to_additive(attn_mask, dtype)
        if m.dim() == 2 or (m.dim() == 3 and m.shape[0] == 1):
            m = m.view(1, 1, q_length, kv_length)
        elif m.dim() == 3:
            m = m.view(batch, heads, q_length, kv_length)
        else:
            raise ValueError(f"attn_mask with {m.dim()} dims is not allowed; expected (L, S) or (B * heads, L, S)")
        out = m
    if key_padding_mask is not None:
        m = _to_additive(key_padding_mask, dtype).view(batch, 1, 1, kv_length)
        out = m if out is None else out + m
    return out


def _to_additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)
