"""Helpers shared by the tests (a uniquely named module, so test suites of several packages can run together)."""

from __future__ import annotations

from pathlib import Path

import torch
from video_swin_vpetl.config import TrainConfig, load_config
from video_swin_vpetl.models import VideoSwinTransformer, create_model

FRAMES, HEIGHT, WIDTH = 16, 32, 40


def tiny_model(num_classes: int = 5, seed: int = 0, **overrides: object) -> VideoSwinTransformer:
    """``video-swin-micro`` (embed 32, depths 2-2, heads 2-4, window 2x4x4): shifted windows in both stages."""
    torch.manual_seed(seed)
    return create_model("video-swin-micro", num_classes=num_classes, **overrides)


def clip_batch(batch: int = 2, frames: int = 8, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(seed))


def tiny_config(root: Path, out: Path, *overrides: str) -> TrainConfig:
    """A CPU run of ``video-swin-micro`` on ``root``: batch 4 (2 steps per epoch), 2 epochs, 2 clips x 3 crops."""
    return load_config(None, [
        "model.arch=video-swin-micro", "model.drop_path_rate=0.1", "data.dataset=synthetic", f"data.root={root}",
        "data.input_size=32", "data.train_short_side=36", "data.test_clips=2", "data.test_crops=3",
        "data.num_workers=0", "method.recipe=patt-kv-8", "optim.batch_size=4", "optim.epochs=2",
        "optim.warmup_epochs=1", "optim.lr=0.05", f"run.output_dir={out}", "run.progress=false", "run.device=cpu",
        "run.eval_batch_size=4", *overrides])
