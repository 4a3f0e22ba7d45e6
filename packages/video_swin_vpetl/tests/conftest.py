"""Fixtures: a tiny mp4 dataset written through PyAV (helpers live in vsw_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from video_swin_vpetl.data.synthetic import AXES, write_dataset
from vsw_helpers import FRAMES, HEIGHT, WIDTH


@pytest.fixture(scope="session")
def mp4_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 motion classes; train 2 / val 1 / test 1 videos per class (16 frames, 32 x 40, H.264 via PyAV)."""
    root = tmp_path_factory.mktemp("mp4_dataset")
    write_dataset(root, AXES, {"train": 2, "val": 1, "test": 1}, frames=FRAMES, size=(HEIGHT, WIDTH), seed=0)
    return root
