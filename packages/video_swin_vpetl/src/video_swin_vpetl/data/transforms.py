"""Spatial transforms on clips ``(T, C, H, W)`` float in [0, 1].

* training: TSN-style multi-scale crop (``GroupMultiScaleCrop(224, [1, .875, .75, .66])``: crop sides drawn from
  ``scale * short side`` with aspect distortion <= 1 step, the crop placed at one of 13 fixed positions), resized to
  ``size x size`` (upstream bruceyo/V-PETL@661198dd38:datasets/kinetics.py + VideoMAE transforms);
* testing: ``num_crops`` crops of ``size x size`` spread along the long side (3: left / centre / right, or top /
  centre / bottom). Upstream appended a CenterCrop after its 3-crop step, so the three crops were identical (bug);
  here the crops sit at distinct offsets, identical only when the frame is square;
* ImageNet mean / std normalisation, output ``(C, T, H, W)``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SCALES = (1.0, 0.875, 0.75, 0.66)


def to_float_clip(frames: np.ndarray) -> torch.Tensor:
    """``(T, H, W, 3)`` uint8 -> ``(T, 3, H, W)`` float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255.0)


def resize(clip: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of every frame (antialiased when shrinking)."""
    if clip.shape[-2:] == (height, width):
        return clip
    return F.interpolate(clip, size=(height, width), mode="bilinear", align_corners=False, antialias=True)


def resize_short_side(clip: torch.Tensor, short_side: int) -> torch.Tensor:
    h, w = clip.shape[-2:]
    if min(h, w) == short_side:
        return clip
    if h <= w:
        return resize(clip, short_side, max(short_side, round(w * short_side / h)))
    return resize(clip, max(short_side, round(h * short_side / w)), short_side)


def crop_offsets(length: int, size: int, num: int) -> list[int]:
    """``num`` crop offsets spread evenly over ``[0, length - size]`` (one crop: the centre)."""
    if num == 1:
        return [(length - size) // 2]
    return [round(i * (length - size) / (num - 1)) for i in range(num)]


def spatial_crops(clip: torch.Tensor, size: int, num_crops: int) -> list[torch.Tensor]:
    """``num_crops`` distinct ``size x size`` crops along the long side, centred on the short side.

    The clip is first resized so that its short side is ``size``.
    """
    clip = resize_short_side(clip, size)
    h, w = clip.shape[-2:]
    if w >= h:
        top = (h - size) // 2
        return [clip[..., top : top + size, x : x + size] for x in crop_offsets(w, size, num_crops)]
    left = (w - size) // 2
    return [clip[..., y : y + size, left : left + size] for y in crop_offsets(h, size, num_crops)]


def fixed_positions(width: int, height: int, crop_w: int, crop_h: int) -> list[tuple[int, int]]:
    """TSN ``more_fix_crop`` positions ``(x, y)``: corners, centre, edge midpoints and quarter points (13)."""
    ws, hs = (width - crop_w) // 4, (height - crop_h) // 4
    grid = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2), (0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3)]
    return [(i * ws, j * hs) for i, j in grid]


def multi_scale_crop(clip: torch.Tensor, size: int, rng: np.random.Generator, scales: tuple[float, ...] = SCALES,
                     max_distort: int = 1) -> torch.Tensor:
    """Random multi-scale crop (same box for every frame), resized to ``size x size``."""
    h, w = clip.shape[-2:]
    base = min(h, w)
    sides = [int(base * s) for s in scales]
    sides_h = [size if abs(s - size) < 3 else s for s in sides]
    sides_w = [size if abs(s - size) < 3 else s for s in sides]
    pairs = [(sw, sh) for i, sh in enumerate(sides_h) for j, sw in enumerate(sides_w) if abs(i - j) <= max_distort]
    crop_w, crop_h = pairs[int(rng.integers(len(pairs)))]
    crop_w, crop_h = min(crop_w, w), min(crop_h, h)
    positions = fixed_positions(w, h, crop_w, crop_h)
    x, y = positions[int(rng.integers(len(positions)))]
    return resize(clip[..., y : y + crop_h, x : x + crop_w], size, size)


def normalize(clip: torch.Tensor) -> torch.Tensor:
    """``(T, C, H, W)`` in [0, 1] -> ``(C, T, H, W)`` normalised with ImageNet mean / std."""
    mean = torch.tensor(MEAN, dtype=clip.dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=clip.dtype).view(1, 3, 1, 1)
    return ((clip - mean) / std).permute(1, 0, 2, 3).contiguous()
