"""UniPT's parameter-free operations, written as upstream computes them (Paranioar/UniPT @ 3fa457d987).

Every function mirrors one upstream helper; the eps placement, the mask axis and the identity position are the
upstream ones (see ``/work/shared/reference/exact_formulas.md``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def l1norm(x: Tensor, dim: int, *, eps: float, mode: str = "add_eps") -> Tensor:
    """L1-normalise ``x`` along ``dim``.

    ``"add_eps"``: ``x / (sum|x| + eps)`` (VSE-infty ``lib/utils.py:l1norm``, CLIP-ViL, MDETR);
    ``"clamp"``: ``x / clamp(sum|x|, min=eps)`` (CLIP4Clip ``modules/module_adapter.py:l1norm``).
    """
    norm = torch.abs(x).sum(dim=dim, keepdim=True)
    if mode == "add_eps":
        return torch.div(x, norm + eps)
    if mode == "clamp":
        return torch.div(x, norm.clamp(min=eps))
    raise ValueError(f"l1norm mode={mode!r} is not allowed; expected one of ['add_eps', 'clamp']")


def mask_from_lengths(lengths: Tensor, max_len: int) -> Tensor:
    """Bool mask ``(B, max_len)``, ``mask[b, j] = j < lengths[b]`` (VSE-infty ``_compute_mask``, via ``arange``)."""
    mask = torch.arange(max_len, device=lengths.device).expand(lengths.size(0), max_len)
    return mask < lengths.long().unsqueeze(1)


def masked_mean(x: Tensor, mask: Tensor | None, *, clamp: bool = False) -> Tensor:
    """Mean over the sequence axis 1 of ``x`` ``(B, L, C)``, counting positions where ``mask`` ``(B, L)`` is 1.

    ``mask=None``: plain ``x.mean(1)``. ``clamp=False``: ``sum(x*m) / sum(m)`` (VSE-infty, CLIP-ViL, MDETR
    ``_aggregate_feature``); ``clamp=True``: ``sum(x*m) / clamp(sum(m), min=1)`` (CLIP4Clip).
    """
    if mask is None:
        return x.mean(dim=1)
    m = mask.unsqueeze(-1).to(x.dtype)
    denom = m.sum(dim=1)
    if clamp:
        denom = denom.clamp(min=1.0)
    return (x * m).sum(dim=1) / denom


def parallel_interaction(
    query: Tensor,
    context: Tensor,
    mask: Tensor | None = None,
    *,
    identity: bool,
    eps: float,
    mode: str = "add_eps",
) -> tuple[Tensor, Tensor]:
    """``W = l1norm(relu(Q C^T * mask[:, None, :]), -1) (+ I)``; returns ``(W C, W)``.

    The mask multiplies the *key* axis only (a padded query row still gets an output; upstream ignores it later).
    The identity is added *after* normalisation. Upstream: ``Our_tuning_for_transformer._cross_attention``
    (VSE-infty, CLIP4Clip without identity), ``LXRTEncoder.cross_attention`` (CLIP-ViL),
    ``Transformer.cross_attention(residual=...)`` (MDETR).
    """
    weights = torch.matmul(query, context.permute(0, 2, 1))
    if mask is not None:
        weights = weights * mask.to(weights.dtype).unsqueeze(1)
    weights = l1norm(torch.relu(weights), dim=-1, eps=eps, mode=mode)
    if identity:
        if weights.size(-1) != weights.size(-2):
            raise ValueError(
                f"identity=True needs as many queries as keys; got {weights.size(-2)} queries and {weights.size(-1)}"
            )
        weights = weights + torch.eye(weights.size(-1), device=weights.device, dtype=weights.dtype)
    return torch.matmul(weights, context), weights


def flat_featuremap(x: Tensor) -> Tensor:
    """``(B, C, H, W) -> (B, H*W, C)`` (VSE-infty ``adapter_for_cnn.py:flat_featuremap``)."""
    return x.reshape(x.size(0), x.size(1), -1).permute(0, 2, 1)


def roll_featuremap(x: Tensor, size: tuple[int, int]) -> Tensor:
    """``(B, H*W, C) -> (B, C, H, W)`` (``roll_featuremap``; upstream: square grid only; here ``size`` is given)."""
    return x.permute(0, 2, 1).reshape(x.size(0), x.size(2), size[0], size[1])


def spatial_rates(shapes: list[tuple[int, int]], *, what: str = "features") -> list[tuple[int, int]]:
    """Integer rates ``r_i = (H_i / H_last, W_i / W_last)`` of each map relative to the last one.

    Upstream hard-codes ``HW_rate = [8, 4, 2]`` for 512 px inputs; here they follow the actual sizes, so any input size
    whose stage maps are integer multiples of the last map works. Raises ``ValueError`` naming the shapes otherwise.
    """
    h_last, w_last = shapes[-1]
    rates = []
    for i, (h, w) in enumerate(shapes):
        if h % h_last or w % w_last:
            raise ValueError(
                f"UniPT cnn_pyramid: {what}[{i}] has spatial size {h}x{w}, which is not an integer multiple of the "
                f"last (anchor) map's {h_last}x{w_last}; all shapes: {[f'{a}x{b}' for a, b in shapes]}. Use an input "
                "size whose stage maps divide evenly (e.g. a multiple of 32 px for a ResNet: 64, 96, 128, 512)."
            )
        rates.append((h // h_last, w // w_last))
    return rates


def window_weighted_pool(raw: Tensor, guide: Tensor, rate: tuple[int, int], *, eps: float, mode: str) -> Tensor:
    """Align a higher-resolution map ``raw`` ``(B, C_i, H_i, W_i)`` to the last grid (VSE-infty ResNeXt).

    ``guide`` is ``ReLU(Conv1x1(h_last))`` ``(B, C_i, H_last, W_last)``::

        mixed = nearest_upsample(guide, (H_i, W_i)) * raw
        w = Unfold(r, stride r)(mixed.sum(1, keepdim=True))                  # (B, r_h*r_w, n_windows)
        w = Fold((H_i, W_i), r, stride r)(l1norm(relu(w), dim=1)) + 1/(r_h*r_w)
        return SumPool_r(w * raw)                                          # AvgPool2d(r, r, divisor_override=1)

    Upstream: ``adapter_for_cnn.py:Our_tuning_for_resnet.forward`` (square ``r``; ``r_h == r_w`` reproduces it).
    """
    size = raw.shape[-2:]
    mixed = F.interpolate(guide, size=size, mode="nearest") * raw
    weights = F.unfold(mixed.sum(dim=1, keepdim=True), kernel_size=rate, stride=rate)
    weights = F.fold(
        l1norm(torch.relu(weights), dim=1, eps=eps, mode=mode), output_size=size, kernel_size=rate, stride=rate
    )
    weights = weights + 1.0 / (rate[0] * rate[1])
    return F.avg_pool2d(weights * raw, kernel_size=rate, stride=rate, divisor_override=1)
