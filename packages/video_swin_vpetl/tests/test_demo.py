"""The demo end to end in its quick setting (real mp4 files, the training code path, the summary file)."""

from __future__ import annotations

import json
from pathlib import Path

from video_swin_vpetl.demo import METHODS, run_demo


def test_quick_demo_runs_and_writes_a_summary(tmp_path: Path) -> None:
    rows = run_demo(tmp_path, quick=True)
    assert [r.recipe for r in rows] == [recipe for _, recipe, _ in METHODS]
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert len(summary["rows"]) == 2 and summary["rows"][0]["chance"] == 25.0
    assert len(list((tmp_path / "data" / "videos").rglob("*.mp4"))) == 4 * (2 + 1 + 1)
    patt, full = rows
    assert patt.trainable < full.trainable / 10
    assert (tmp_path / "runs" / "patt-kv-16" / "checkpoint-best.pt").is_file()
