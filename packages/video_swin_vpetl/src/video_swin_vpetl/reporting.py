"""Run results: a ``peft_core.results.RunResult`` (system ``v_petl``) and a readable table.

Names follow shared/baselines/v_petl.toml: backbone ``video-swin-base`` for Swin-B, dataset ``hmdb51`` / ``ssv2`` /
``ucf101`` / ``k400``, method = the recipe name (``adaptformer-64+patt-kv-128``, ``patt-kv-128``, ``head-only``...).
Metrics: ``top1``, ``top5`` (%, per video, views averaged). ``trainable_params`` counts the head too;
``extra.adapter_params`` is the count without the head (the baseline's "adapter only" rows).
"""

from __future__ import annotations

import io
import resource
import sys
from typing import Any

import torch
from peft_core.results import RunResult

from video_swin_vpetl.engine import EvalResult

SYSTEM = "v_petl"
TASK = "video_classification"


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated memory; CPU: peak resident set size of this process (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def make_result(*, dataset: str, split: str, method: str, backbone: str, evaluation: EvalResult,
                trainable: int, total: int, seed: int | None, wall_time_s: float, peak_mb: float | None,
                extra: dict[str, Any]) -> RunResult:
    env = RunResult.collect_environment("video-swin-vpetl")
    extra = {"num_videos": evaluation.num_videos, "views_per_video": evaluation.views,
             "unreadable_videos": evaluation.unreadable, **extra}
    return RunResult(system=SYSTEM, task=TASK, dataset=dataset, split=split, method=method, backbone=backbone,
                     metrics=evaluation.metrics(), trainable_params=trainable, total_params=total, seed=seed,
                     wall_time_s=wall_time_s, peak_memory_mb=peak_mb, extra=extra, **env)


def result_table(result: RunResult) -> str:
    """The result as a small text table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result.system}: {result.method} on {result.dataset}/{result.split} ({result.backbone})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in result.metrics.items():
        table.add_row(name, f"{value:.2f}")
    table.add_row("videos evaluated", str(result.extra.get("num_videos", "?")))
    table.add_row("unreadable videos (excluded)", str(len(result.extra.get("unreadable_videos", []))))
    table.add_row("trainable params", f"{result.trainable_params:,} ({result.trainable_percent or 0:.3f}%)")
    if "adapter_params" in result.extra:
        table.add_row("  of which adapters", f"{result.extra['adapter_params']:,}")
    table.add_row("total params", f"{result.total_params:,}")
    if result.wall_time_s is not None:
        table.add_row("wall time", f"{result.wall_time_s:.1f} s")
    if result.peak_memory_mb is not None:
        table.add_row("peak memory", f"{result.peak_memory_mb:.0f} MiB")
    buffer = io.StringIO()
    Console(file=buffer, width=120, color_system=None).print(table)
    return buffer.getvalue()
