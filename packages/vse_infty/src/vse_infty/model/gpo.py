"""Generalized Pooling Operator (GPO), VSE-infty's learned pooling of a variable-size feature set.

Upstream: woodfrog/vse_infty@4ccad17:lib/modules/aggr/gpo.py:GPO (identical in Paranioar/UniPT@3fa457d987:
VSE-infty/lib/modules/aggr/gpo.py). For a sample with ``n`` valid features ``x_1..x_n`` (``B x K x D``, ``lengths``)::

    pe_k      = [sin(k w_0), cos(k w_0), sin(k w_1), ...],   w_j = 10000^(-2j / d_pe)      k = 0..n-1
    h_k       = (GRU_fwd(pe)_k + GRU_bwd(pe)_k) / 2                                          bidirectional GRU
    theta_k   = softmax_k( Linear(d_hidden -> 1, no bias)(h_k) / 0.1 )                      over the n valid positions
    x_sorted  = x sorted in descending order along the set axis, separately per channel
    pooled    = sum_k theta_k x_sorted_k                                                     (B x D)

Padded positions get score -10000 before the softmax and are zero-filled after the sort, as upstream. The positional
encodings are cached per length (not part of the state dict, as upstream's ``pe_database``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

TEMPERATURE = 0.1
MASK_VALUE = -10000.0


def positional_encoding_1d(d_model: int, length: int) -> Tensor:
    """``(length, d_model)`` sin/cos encoding: ``pe[k, 2j] = sin(k w_j)``, ``pe[k, 2j + 1] = cos(k w_j)``."""
    if d_model % 2:
        raise ValueError(f"GPO positional encoding needs an even d_model, got {d_model}")
    pe = torch.zeros(length, d_model)
    position = torch.arange(0, length, dtype=torch.float).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float) * -(math.log(10000.0) / d_model))
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe


class GPO(nn.Module):
    """``GPO(d_pe, d_hidden)``: ``forward(features (B, K, D), lengths (B,)) -> (pooled (B, D), weights (B, n, 1))``."""

    def __init__(self, d_pe: int = 32, d_hidden: int = 32) -> None:
        super().__init__()
        self.d_pe = d_pe
        self.d_hidden = d_hidden
        self.gru = nn.GRU(d_pe, d_hidden, 1, batch_first=True, bidirectional=True)
        self.linear = nn.Linear(d_hidden, 1, bias=False)
        self._pe_cache: dict[int, Tensor] = {}

    def positional_encoding(self, length: int) -> Tensor:
        if length not in self._pe_cache:
            self._pe_cache[length] = positional_encoding_1d(self.d_pe, length)
        return self._pe_cache[length]

    def compute_pool_weights(self, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Softmax weights ``(B, n_max, 1)`` over the sorted positions and the validity mask ``(B, n_max, 1)``."""
        max_len = int(lengths.max())
        batch = lengths.shape[0]
        device = lengths.device
        pes = self.positional_encoding(max_len).to(device=device, dtype=self.gru.weight_ih_l0.dtype)
        pes = pes.unsqueeze(0).expand(batch, max_len, self.d_pe)
        positions = torch.arange(max_len, device=device).expand(batch, max_len)
        mask = (positions < lengths.long().unsqueeze(1)).unsqueeze(-1)
        pes = pes.masked_fill(~mask, 0)
        self.gru.flatten_parameters()
        packed = pack_padded_sequence(pes, lengths.long().cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out_emb, _ = pad_packed_sequence(out, batch_first=True, total_length=max_len)
        half = out_emb.shape[2] // 2
        out_emb = (out_emb[:, :, :half] + out_emb[:, :, half:]) / 2
        scores = self.linear(out_emb).masked_fill(~mask, MASK_VALUE)
        return torch.softmax(scores / TEMPERATURE, dim=1), mask

    def forward(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        if features.dim() != 3:
            raise ValueError(f"GPO expects features (B, K, D), got shape {tuple(features.shape)}")
        if lengths.shape != features.shape[:1]:
            raise ValueError(f"GPO lengths has shape {tuple(lengths.shape)}; expected ({features.shape[0]},)")
        if bool((lengths < 1).any()) or int(lengths.max()) > features.shape[1]:
            raise ValueError(f"GPO lengths must lie in [1, {features.shape[1]}], got {lengths.tolist()}")
        weights, mask = self.compute_pool_weights(lengths)
        features = features[:, : int(lengths.max()), :]
        sorted_features = features.masked_fill(~mask, MASK_VALUE).sort(dim=1, descending=True)[0]
        sorted_features = sorted_features.masked_fill(~mask, 0)
        pooled = (sorted_features * weights.to(sorted_features.dtype)).sum(1)
        return pooled, weights
