"""3D window helpers of Video Swin: window size clamping, partition / reverse, shifted-window mask, relative index.

Shapes: a feature map is channels-last ``(B, D, H, W, C)``; a window size ``(wd, wh, ww)`` holds
``N = wd * wh * ww`` tokens, ordered time-major (``t * wh * ww + h * ww + w``).

Upstream: SwinTransformer/Video-Swin-Transformer mmaction/models/backbones/swin_transformer.py
(``get_window_size``, ``window_partition``, ``window_reverse``, ``compute_mask``), reused unchanged by
bruceyo/V-PETL@661198dd38:models/video_swin_transformer_patt.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

MASK_VALUE = -100.0
"""Logit added between tokens of different shifted regions (upstream value; exp(-100) is 0 in float32)."""

Size3 = tuple[int, int, int]


def get_window_size(input_size: Sequence[int], window_size: Sequence[int],
                    shift_size: Sequence[int] | None = None) -> tuple[Size3, Size3]:
    """Clamp the window to the input: along every axis where ``input <= window`` the window becomes the whole axis
    and the shift along it becomes 0. Returns ``(window, shift)`` (shift all zeros when ``shift_size`` is None)."""
    window = list(window_size)
    shift = list(shift_size) if shift_size is not None else [0, 0, 0]
    for i, size in enumerate(input_size):
        if size <= window[i]:
            window[i] = int(size)
            shift[i] = 0
    return tuple(window), tuple(shift)  # type: ignore[return-value]


def window_partition(x: torch.Tensor, window: Size3) -> torch.Tensor:
    """``(B, D, H, W, C)`` -> ``(B * nW, wd * wh * ww, C)``; D, H, W must be multiples of the window."""
    b, d, h, w, c = x.shape
    wd, wh, ww = window
    x = x.view(b, d // wd, wd, h // wh, wh, w // ww, ww, c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, wd * wh * ww, c)


def window_reverse(windows: torch.Tensor, window: Size3, batch: int, d: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B * nW, N, C)`` -> ``(B, D, H, W, C)``."""
    wd, wh, ww = window
    x = windows.reshape(batch, d // wd, h // wh, w // ww, wd, wh, ww, -1)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(batch, d, h, w, -1)


def _regions(length: int, window: int, shift: int, device: torch.device | None) -> torch.Tensor:
    """Region id per position along one axis after a cyclic shift by ``shift``: 0 for ``[0, L - window)``,
    1 for ``[L - window, L - shift)``, 2 for ``[L - shift, L)`` (all 0 without shift)."""
    ids = torch.zeros(length, dtype=torch.long, device=device)
    if shift > 0:
        ids[length - window : length - shift] = 1
        ids[length - shift :] = 2
    return ids


def shifted_window_mask(d: int, h: int, w: int, window: Size3, shift: Size3,
                        device: torch.device | None = None) -> torch.Tensor:
    """Additive attention mask ``(nW, N, N)`` of a cyclically shifted ``(d, h, w)`` map (padded to whole windows):
    ``0`` between tokens of the same region, :data:`MASK_VALUE` between tokens that the shift brought together.

        region(t, y, x) = 9 r_d(t) + 3 r_h(y) + r_w(x);   M[i, j] = -100 * [region_i != region_j]
    """
    rd, rh, rw = (_regions(n, win, s, device) for n, win, s in zip((d, h, w), window, shift, strict=True))
    region = rd[:, None, None] * 9 + rh[None, :, None] * 3 + rw[None, None, :]
    ids = window_partition(region[None, ..., None], window).squeeze(-1)  # (nW, N)
    different = ids[:, None, :] != ids[:, :, None]
    return different.float() * MASK_VALUE


def relative_position_index(window: Size3) -> torch.Tensor:
    """``(N, N)`` index into a ``((2wd-1)(2wh-1)(2ww-1), heads)`` bias table for every pair of tokens of a window:

        idx(i, j) = (dt + wd - 1)(2wh - 1)(2ww - 1) + (dy + wh - 1)(2ww - 1) + (dx + ww - 1),   d* = pos_i - pos_j
    """
    wd, wh, ww = window
    cpu = torch.device("cpu")  # built on the CPU even inside `with torch.device("meta")`, then moved
    axes = [torch.arange(n, device=cpu) for n in window]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij")).flatten(1)  # (3, N)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # (N, N, 3)
    rel = rel + torch.tensor([wd - 1, wh - 1, ww - 1], device=cpu)
    index = rel[..., 0] * (2 * wh - 1) * (2 * ww - 1) + rel[..., 1] * (2 * ww - 1) + rel[..., 2]
    return index.to(torch.get_default_device())
