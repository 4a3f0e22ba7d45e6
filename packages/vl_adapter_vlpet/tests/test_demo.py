"""The demo end to end at its reduced budget: synthetic multitask data in the upstream formats, the two-objective
pre-training, VL-PET-large and full fine-tuning through ``vl-pet train``, learning, the real-size comparison."""

from __future__ import annotations

import json
from pathlib import Path

from peft_core.results import RunResult
from vl_adapter_vlpet.demo import METRICS, QA_TASKS, run_demo


def test_quick_demo_learns_with_vl_pet_and_full_finetuning(tmp_path: Path) -> None:
    rows = run_demo(tmp_path, quick=True, methods=("vl-pet-large", "full-finetune"))
    assert [r.preset for r in rows] == ["vl-pet-large", "full-finetune"]
    for row in rows:
        before = sum(row.before[t][METRICS[t]] for t in QA_TASKS)
        after = sum(row.after[t][METRICS[t]] for t in QA_TASKS)
        assert after > before, (row.preset, row.before, row.after)  # the pre-trained backbone never saw a question
    vl_pet, full = rows
    assert vl_pet.trainable < full.trainable / 5 and full.trainable == full.total
    assert abs(vl_pet.real_percent - 4.16) <= 0.05 and full.real_percent == 100.0  # VL-BART-base vs Table 2
    summary = json.loads((tmp_path / "demo.json").read_text())
    losses = [epoch["caption_loss"] for epoch in summary["pretrain"]]
    assert len(summary["rows"]) == 2 and losses[-1] < losses[0] / 2
    constant = summary["best_constant_answer"]
    assert constant["gqa"] == 50.0, "GQA's synthetic yes / no questions are balanced by construction"
    assert set(constant) == set(QA_TASKS) and all(0.0 < v <= 100.0 for v in constant.values())
    compared = RunResult.read(tmp_path / "compare" / "vl-pet-large.json")
    assert compared.backbone == "bart-base" and compared.trainable_params == vl_pet.real_trainable
    assert (tmp_path / "runs" / "vl-pet-large" / "results" / "average.json").is_file()
