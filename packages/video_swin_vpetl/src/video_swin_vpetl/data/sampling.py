"""Temporal sampling: which frame indices make a clip of ``num_frames`` frames taken every ``sampling_rate``.

A clip spans ``span = num_frames * sampling_rate`` consecutive frames starting at ``start``:
``idx_k = min(start + k * sampling_rate, T - 1)`` (a video shorter than the span repeats its last frame).

* training: ``start`` uniform in ``[0, T - span]`` (one segment at a random offset, as upstream VideoMAE-style
  ``VideoClsDataset`` training in bruceyo/V-PETL@661198dd38:datasets/kinetics.py);
* validation (one clip): ``start = (T - span) // 2``, deterministic. Upstream drew a random offset in its
  per-epoch evaluation (bug), so validation accuracy and the chosen best checkpoint changed from run to run;
* multi-clip test: ``num_clips`` starts spread evenly over ``[0, T - span]`` (first and last included).
"""

from __future__ import annotations

import numpy as np


def clip_indices(num_total: int, start: int, num_frames: int, sampling_rate: int) -> np.ndarray:
    """``min(start + k * sampling_rate, T - 1)`` for ``k < num_frames``."""
    if num_total <= 0:
        raise ValueError(f"num_total={num_total}: expected a video with at least one frame")
    idx = start + np.arange(num_frames) * sampling_rate
    return np.minimum(idx, num_total - 1)


def max_start(num_total: int, num_frames: int, sampling_rate: int) -> int:
    """Largest start whose clip stays inside the video (0 for short videos)."""
    return max(0, num_total - num_frames * sampling_rate)


def train_clip(num_total: int, num_frames: int, sampling_rate: int, rng: np.random.Generator) -> np.ndarray:
    """One segment at a uniformly random offset."""
    start = int(rng.integers(0, max_start(num_total, num_frames, sampling_rate) + 1))
    return clip_indices(num_total, start, num_frames, sampling_rate)


def center_clip(num_total: int, num_frames: int, sampling_rate: int) -> np.ndarray:
    """The clip in the temporal centre (deterministic validation)."""
    return clip_indices(num_total, max_start(num_total, num_frames, sampling_rate) // 2, num_frames, sampling_rate)


def evenly_spaced_clips(num_total: int, num_frames: int, sampling_rate: int, num_clips: int) -> list[np.ndarray]:
    """``num_clips`` clips with starts evenly spread over ``[0, T - span]``; one clip is the centre clip."""
    if num_clips < 1:
        raise ValueError(f"num_clips={num_clips}: expected at least 1")
    if num_clips == 1:
        return [center_clip(num_total, num_frames, sampling_rate)]
    last = max_start(num_total, num_frames, sampling_rate)
    starts = [round(i * last / (num_clips - 1)) for i in range(num_clips)]
    return [clip_indices(num_total, s, num_frames, sampling_rate) for s in starts]
