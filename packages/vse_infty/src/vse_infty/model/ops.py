"""Small tensor operations of VSE-infty: l2 normalisation, grid flattening and the random grid dropping.

Upstream: Paranioar/UniPT@3fa457d987:VSE-infty/lib/utils.py (``l2norm``, ``random_drop_feature``) and
woodfrog/vse_infty@c9943b2:lib/encoders.py:EncoderImageFull.forward (the original size augmentation). Random numbers
come from torch's global CPU generator (upstream: numpy), so a run is reproducible from the saved torch RNG state.
"""

from __future__ import annotations

import torch
from torch import Tensor


def l2norm(x: Tensor, dim: int = -1, eps: float = 1e-8) -> Tensor:
    """``x / (||x||_2 + eps)`` (eps added to the norm, as upstream)."""
    return x / (x.pow(2).sum(dim=dim, keepdim=True).sqrt() + eps)


def flat_featuremap(x: Tensor) -> Tensor:
    """``(B, C, H, W) -> (B, H*W, C)`` (row-major grid order, as upstream ``view(B, C, -1).permute(0, 2, 1)``)."""
    if x.dim() != 4:
        raise ValueError(f"expected a feature map (B, C, H, W), got shape {tuple(x.shape)}")
    return x.flatten(2).transpose(1, 2)


def _compact(features: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """Kept rows of each sample moved to the front in their original order, the rest zero; and the counts."""
    order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices
    kept_sorted = torch.gather(keep, 1, order)
    gathered = torch.gather(features, 1, order.unsqueeze(-1).expand_as(features))
    out = gathered * kept_sorted.unsqueeze(-1).to(features.dtype)
    return out, keep.sum(1)


def drop_features_unipt(features: Tensor, rate: float) -> tuple[Tensor, Tensor]:
    """UniPT's ``random_drop_feature(feature, rate)``: every grid kept with probability ``1 - rate`` (redrawn for a
    sample until at least one is kept); kept grids first, in order, zero padding after; shape unchanged.

    Returns ``(features (B, K, D), lengths (B,) long)``.
    """
    batch, length = features.shape[:2]
    keep = torch.rand(batch, length) > rate
    empty = ~keep.any(1)
    while bool(empty.any()):
        keep[empty] = torch.rand(int(empty.sum()), length) > rate
        empty = ~keep.any(1)
    out, lengths = _compact(features, keep.to(features.device))
    return out, lengths


def drop_features_vse_infty(features: Tensor, rate: float) -> tuple[Tensor, Tensor]:
    """woodfrog VSE-infty's size augmentation: with ``u ~ U(0, 1)`` per image, images with ``u > rate`` keep each grid
    whose ``v ~ U(0, 1)`` exceeds ``rate * u`` (others keep every grid); truncated to the longest kept set.

    Returns ``(features (B, K', D), lengths (B,) long)``. A sample left with no grid keeps its first one (upstream
    would crash in the pooling; only possible for very small grids).
    """
    batch, length = features.shape[:2]
    v = torch.rand(batch, length)
    u = torch.rand(batch)
    keep = torch.where((u > rate).unsqueeze(1), v > rate * u.unsqueeze(1), torch.ones_like(v, dtype=torch.bool))
    keep[~keep.any(1), 0] = True
    out, lengths = _compact(features, keep.to(features.device))
    return out[:, : int(lengths.max())], lengths


def drop_features(features: Tensor, rate: float, mode: str) -> tuple[Tensor, Tensor]:
    """Dispatch on ``mode`` (``unipt`` or ``vse_infty``, see :class:`~vse_infty.model.config.ModelConfig`)."""
    if mode == "unipt":
        return drop_features_unipt(features, rate)
    if mode == "vse_infty":
        return drop_features_vse_infty(features, rate)
    raise ValueError(f"drop_feature_mode={mode!r} is not allowed; expected 'unipt' or 'vse_infty'")
