"""Run results: a ``peft_core.results.RunResult`` (system ``v_petl``) and a readable table.

Names follow shared/baselines/v_petl.toml: backbone ``video-swin-base`` for Swin-B, dataset ``hmdb51`` / ``ssv2`` /
``ucf101`` / ``k400``, method = the recipe name (``adaptformer-64+patt-kv-128``, ``patt-kv-128``, ``head-only``...).
Metrics: ``top1``, ``top5`` (%, per video, views averaged). ``trainable_params`` counts the head too;
``extra.adapter_params`` is the count without the head (the baseline's "adapter only" rows).
"""

from __future__ import annotations

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
    """The result as a small text table (:meth:`peft_core.results.RunResult.table`)."""
    details = [("videos evaluated", str(result.extra.get("num_videos", "?"))),
               ("unreadable videos (excluded)", str(len(result.extra.get("unreadable_videos", []))))]
    if "adapter_params" in result.extra:
        details.append(("adapter params (of the trainable)", f"{result.extra['adapter_params']:,}"))
    return result.table(details)
