"""compare: matching runs to upstream rows, hand-checked deltas, FLAGGED runs, Markdown/text output and the plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from peft_core.baselines import load_baselines
from peft_core.compare import compare_main, compare_runs, render_markdown, render_text
from peft_core.results import RunResult


def _result(**overrides: Any) -> RunResult:
    fields: dict[str, Any] = {
        "system": "vl_pet",
        "task": "vqa",
        "dataset": "vqa",
        "split": "karpathy_test",
        "method": "vl-pet-large",
        "backbone": "bart-base",
        "metrics": {"vqa_score": 66.50},
        "trainable_params": 6_050_000,
        "total_params": 145_400_000,
        "package_version": "0.1.0",
    }
    fields.update(overrides)
    return RunResult(**fields)


def _by(run: Any, source: str, method: str) -> Any:
    [found] = [c for c in run.rows if c.row.source == source and c.row.method == method]
    return found


def test_vl_pet_bart_vqa_matches_table2_and_readme_rows_with_hand_computed_deltas() -> None:
    report = compare_runs([_result()], load_baselines("vl_pet"))
    [run] = report.runs
    assert run.compared and run.flag is None and not report.flagged
    assert run.metrics == ("vqa_score",) and run.run_values == {"vqa_score": 66.50}
    assert len(run.rows) == 11 + 4  # Table 2 BART-base methods + README single-run checkpoints
    assert {(c.row.backbone, c.row.dataset, c.row.split) for c in run.rows} == {("bart-base", "vqa", "karpathy_test")}
    expected = {  # run 66.50 minus the published value
        ("paper Table 2", "full-finetune"): 66.50 - 66.88,  # -0.38
        ("paper Table 2", "lora"): 66.50 - 65.15,  # +1.35
        ("paper Table 2", "prompt-tuning"): 66.50 - 44.12,  # +22.38
        ("paper Table 2", "vl-pet-large"): 66.50 - 66.17,  # +0.33
        ("README", "vl-pet-large"): 66.50 - 66.40,  # +0.10
    }
    for (source, method), delta in expected.items():
        comp = _by(run, source, method)
        assert comp.deltas["vqa_score"] == pytest.approx(delta, abs=1e-9)
    assert _by(run, "paper Table 2", "lora").deltas["vqa_score"] == pytest.approx(1.35)
    assert _by(run, "paper Table 2", "lora").row.trainable_percent == 5.93
    assert [c.row.method for c in run.rows if c.same_method] == ["vl-pet-large", "vl-pet-large"]


def test_t5_run_only_sees_t5_rows_and_average_row() -> None:
    result = _result(backbone="t5-base", dataset="average", split="vqa+gqa+nlvr2+coco_caption", metrics={"avg": 79.0})
    [run] = compare_runs([result], load_baselines("vl_pet")).runs
    assert len(run.rows) == 10 and {c.row.backbone for c in run.rows} == {"t5-base"}
    assert _by(run, "paper Table 2", "lst").deltas["avg"] == pytest.approx(79.0 - 76.90)


def test_other_dataset_is_flagged_not_compared() -> None:
    result = _result(dataset="okvqa", split="val")
    report = compare_runs([result, _result()], load_baselines())
    flagged, ok = report.runs
    assert report.flagged == [flagged] and ok.compared
    # the task metric is never compared; only the dataset-independent Params % rows are
    assert flagged.metrics == ("params_percent",) and all(c.row.dataset == "*" for c in flagged.rows)
    assert flagged.flag is not None
    assert flagged.flag.startswith(
        "FLAGGED: no upstream row for dataset=okvqa split=val backbone=bart-base (available: "
    )
    assert "vqa/karpathy_test/bart-base" in flagged.flag and "refcoco" not in flagged.flag  # same system only
    # same dataset but another split, or another backbone: also flagged
    for other in (_result(split="val"), _result(backbone="bart-large")):
        [run] = compare_runs([other], load_baselines("vl_pet")).runs
        assert run.flag is not None and "vqa_score" not in run.metrics


def test_unknown_system_and_no_common_metric_are_flagged() -> None:
    [run] = compare_runs([_result(system="nope")], load_baselines("vl_pet")).runs
    assert run.flag == "FLAGGED: no upstream rows for system=nope (systems with rows: vl_pet)"
    [run] = compare_runs([_result(metrics={"accuracy": 66.5})], load_baselines("vl_pet")).runs
    assert run.flag is not None and "no metric in common" in run.flag and run.rows  # rows are still listed


def test_parameter_count_rows_compare_with_trainable_params() -> None:
    result = _result(
        system="v_petl",
        task="action_recognition",
        dataset="hmdb51",
        split="val",
        method="adaptformer-64",
        backbone="video-swin-base",
        metrics={"top1": 70.0},
        trainable_params=1_553_664,
        total_params=90_000_000,
    )
    [run] = compare_runs([result], load_baselines("v_petl")).runs
    methods = [c.row.method for c in run.rows]
    assert "patt-kv-8" in methods and methods.count("head-only") == 1  # wildcard rows + hmdb51 rows, not ssv2
    assert _by(run, "upstream code", "adaptformer-64").deltas["trainable_params_m"] == pytest.approx(1.553664 - 1.55)
    assert _by(run, "upstream code", "head-only").deltas["trainable_params"] == 1_553_664 - 52_275
    assert run.notes == ("run metrics without an upstream value here: top1",)
    [same] = compare_runs([result], load_baselines("v_petl"), same_method_only=True).runs
    assert [c.row.method for c in same.rows] == ["adaptformer-64"]
    [other] = compare_runs([_result(method="houlsby")], load_baselines("vl_pet"), same_method_only=True).runs
    assert other.flag is not None and other.flag.startswith(
        "FLAGGED: no upstream row for method=houlsby with dataset=vqa"
    )


def test_render_text_and_markdown() -> None:
    report = compare_runs([_result(), _result(dataset="okvqa", split="val")], load_baselines("vl_pet"), ["a", "b"])
    text = render_text(report)
    assert "a: system=vl_pet method=vl-pet-large backbone=bart-base dataset=vqa" in text
    assert "65.15" in text and "+1.35" in text and "FLAGGED: no upstream row for dataset=okvqa" in text
    markdown = render_markdown(report)
    assert "| source | method | trainable % | vqa_score | Δ vqa_score | note |" in markdown
    assert "| paper Table 2 | lora | 5.93 | 65.15 | +1.35 | mean of 3 seeds |" in markdown
    assert "| **this run** | **vl-pet-large** | 4.16 | 66.50 |  |  |" in markdown
    assert "**FLAGGED: no upstream row for dataset=okvqa split=val backbone=bart-base" in markdown


# ---------------------------------------------------------------------------------------------------------------------
# CLI


def test_cli_markdown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _result().write(tmp_path / "run.json")
    assert compare_main([str(path), "--markdown"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"### {path}\n")
    assert "| source | method | trainable % | vqa_score | Δ vqa_score | note |\n|---|---|---:|---:|---:|---|" in out
    assert "| README | **vl-pet-large** | 4.16 | 66.40 | +0.10 | single run, released checkpoint |" in out


def test_cli_text_flag_and_strict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _result().write(tmp_path / "good.json")
    bad = _result(dataset="okvqa", split="val").write(tmp_path / "bad.json")
    assert compare_main([str(good), str(bad)]) == 0
    out = capsys.readouterr().out
    assert "vl-pet-large" in out and "-0.38" in out
    assert "FLAGGED: no upstream row for dataset=okvqa split=val backbone=bart-base (available:" in out
    assert compare_main([str(good), str(bad), "--strict"]) == 3
    assert compare_main([str(good), "--strict"]) == 0


def test_cli_plot_writes_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vqa = _result().write(tmp_path / "vqa.json")
    gqa = _result(dataset="gqa", split="test_dev", metrics={"gqa_acc": 55.0}).write(tmp_path / "gqa.json")
    runs = [vqa, gqa]
    out = tmp_path / "plots" / "cmp.png"
    assert compare_main([*map(str, runs), "--plot", str(out)]) == 0
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert f"wrote {out}" in capsys.readouterr().err


def test_cli_reports_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"schema_version": 1}')
    assert compare_main([str(path)]) == 1
    err = capsys.readouterr().err
    assert f"error: {path}: field 'system'" in err
    good = _result().write(tmp_path / "good.json")
    assert compare_main([str(good), "--baselines", str(tmp_path / "missing")]) == 1
    assert "missing" in capsys.readouterr().err


def test_cli_baselines_override(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tables = tmp_path / "tables"
    tables.mkdir()
    (tables / "vl_pet.toml").write_text(
        'schema_version = 1\nsystem = "vl_pet"\n[metrics]\nvqa_score = "VQA"\n[[group]]\nsource = "mine"\n'
        'backbone = "bart-base"\ndataset = "vqa"\nsplit = "karpathy_test"\n'
        'rows = [{ method = "x", metrics = { vqa_score = 60.0 } }]\n'
    )
    path = _result().write(tmp_path / "run.json")
    assert compare_main([str(path), "--markdown", "--baselines", str(tables)]) == 0
    out = capsys.readouterr().out
    assert "| mine | x | — | 60.00 | +6.50 |  |" in out and "paper Table 2" not in out
