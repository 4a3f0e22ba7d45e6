"""Datasets of video clips read from a list file.

Every item is a dict ``{"video": (V, 3, T, S, S), "label", "index", "valid", "error"}`` with V views:

* ``train``: V = 1, one segment at a random offset, multi-scale crop (randomness drawn from
  ``(seed, epoch, index)``, so an epoch is reproducible whatever the worker count, and resuming is exact);
* ``val``: V = 1, the centre clip and the centre crop (deterministic; upstream's per-epoch evaluation drew a random
  temporal offset);
* ``test``: V = clips x crops (default 4 x 3), clip-major; the engine averages the logits of the views.

A video that cannot be decoded gives ``valid=False`` with the reason in ``error`` and a zero tensor; the engine
leaves it out of the loss and of the accuracy counts and lists it in the results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from video_swin_vpetl.data.decode import VideoDecodeError, read_frames
from video_swin_vpetl.data.lists import VideoRecord
from video_swin_vpetl.data.sampling import center_clip, evenly_spaced_clips, train_clip
from video_swin_vpetl.data.transforms import multi_scale_crop, normalize, spatial_crops, to_float_clip

MODES = ("train", "val", "test")


@dataclass(frozen=True)
class ClipSpec:
    """How clips are cut (defaults: V-PETL README HMDB51 recipe; upstream default sampling_rate is 4)."""

    num_frames: int = 8
    sampling_rate: int = 2
    input_size: int = 224
    train_short_side: int = 256
    test_clips: int = 4
    test_crops: int = 3
    backend: str = "pyav"

    def views(self, mode: str) -> int:
        return self.test_clips * self.test_crops if mode == "test" else 1


class VideoDataset(Dataset):
    """Clips of the videos in ``records`` for ``mode`` (``train``, ``val`` or ``test``)."""

    def __init__(self, records: Sequence[VideoRecord], spec: ClipSpec, mode: str, seed: int = 0) -> None:
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is not allowed; expected one of {list(MODES)}")
        self.records = list(records)
        self.spec = spec
        self.mode = mode
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Training randomness depends on (seed, epoch, index)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def _views(self, frames: np.ndarray, index: int) -> torch.Tensor:
        s = self.spec
        if self.mode == "train":
            rng = np.random.default_rng([self.seed, self.epoch, index])
            idx = train_clip(len(frames), s.num_frames, s.sampling_rate, rng)
            return normalize(multi_scale_crop(to_float_clip(frames[idx]), s.input_size, rng))[None]
        if self.mode == "val":
            idx = center_clip(len(frames), s.num_frames, s.sampling_rate)
            return normalize(spatial_crops(to_float_clip(frames[idx]), s.input_size, 1)[0])[None]
        views = []
        for idx in evenly_spaced_clips(len(frames), s.num_frames, s.sampling_rate, s.test_clips):
            views += [normalize(c) for c in spatial_crops(to_float_clip(frames[idx]), s.input_size, s.test_crops)]
        return torch.stack(views)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        short_side = self.spec.train_short_side if self.mode == "train" else self.spec.input_size
        try:
            frames = read_frames(record.path, short_side=short_side, backend=self.spec.backend)
            video, valid, error = self._views(frames, index), True, ""
        except VideoDecodeError as exc:
            s = self.spec
            video = torch.zeros(s.views(self.mode), 3, s.num_frames, s.input_size, s.input_size)
            valid, error = False, str(exc)
        return {"video": video, "label": record.label, "index": index, "valid": valid, "error": error}
