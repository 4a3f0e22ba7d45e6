"""The ``vl-pet`` command: help, config / recipes, methods, params, memory wiring, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from vl_adapter_vlpet import cli
from vl_adapter_vlpet.cli import main
from vl_adapter_vlpet.config import TrainConfig, dump_yaml, load_config
from vl_adapter_vlpet.methods import METHODS


def test_module_help_runs_in_a_fresh_process() -> None:
    proc = subprocess.run([sys.executable, "-m", "vl_adapter_vlpet", "--help"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    for command in ("train", "eval", "compare", "params", "memory", "methods", "config", "demo"):
        assert command in proc.stdout


def test_config_prints_the_defaults_and_the_shipped_recipes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["config"]) == 0
    text = capsys.readouterr().out
    assert text == dump_yaml(TrainConfig())
    (tmp_path / "defaults.yaml").write_text(text)
    assert load_config(tmp_path / "defaults.yaml") == TrainConfig()
    assert main(["config", "--list"]) == 0
    names = capsys.readouterr().out.split()
    assert "vl-pet-large-t5" in names and "lst-t5" in names and "video-vl-pet-large-bart" in names
    assert main(["config", "vl-pet-large-t5"]) == 0
    recipe = yaml.safe_load(capsys.readouterr().out)
    assert recipe["model"]["backbone"] == "t5-base" and recipe["optim"]["lr"] == pytest.approx(3e-4)
    assert main(["config", "no-such-recipe"]) == 2
    assert "no recipe 'no-such-recipe'" in capsys.readouterr().err


def test_methods_lists_every_method_and_what_is_not_available(capsys: pytest.CaptureFixture) -> None:
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in METHODS:
        assert f"{name}: " in out
    assert "hyperformer: not available" in out
    assert "scripts/image-text/VL-PET-large.sh (lr 0.001, batch 500; Table 2 4.16%)" in out


def test_params_prints_the_count_table_with_table_2(capsys: pytest.CaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The command's wiring (the real-size counts are vl_adapter_vlpet.counts', tested there against Table 2)."""
    import vl_adapter_vlpet.counts as counts

    rows = [counts.CountRow("vl-pet-large", "bart-base", 6_052_416, 145_626_432, 141_156_864, 9_216, "Table 2", 4.16)]
    monkeypatch.setattr(counts, "real_size_counts", lambda backbone: rows if backbone == "bart-base" else [])
    assert main(["params", "--backbone", "bart-base"]) == 0
    out = capsys.readouterr().out
    assert "vl-pet-large" in out and "6,052,416" in out and "4.16" in out and "upstream %" in out
    assert main(["params", "--backbone", "bart-base", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["percent"] == pytest.approx(100 * 6_052_416 / 145_626_432) and row["paper_percent"] == 4.16


def test_memory_runs_each_method_and_reports_ratios(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The command's wiring (the measurement itself is vl_adapter_vlpet.memory's, tested there)."""
    calls = []

    def fake(backbone: str, method: str, batch_size: int, **kw: object) -> dict:
        calls.append((backbone, method, batch_size, kw))
        big = method == "full-finetune"
        return {"backbone": backbone, "method": method, "device": "cpu", "batch_size": batch_size,
                "n_vis_tokens": kw["n_vis_tokens"], "text_len": 20, "target_len": 20, "before_mb": 100.0,
                "peak_mb": 400.0 if big else 200.0, "step_mb": 300.0 if big else 100.0,
                "step_s": 2.0 if big else 1.0, "trainable": 10 if big else 1, "total": 10, "percent": 100.0,
                "probe": "test"}

    import vl_adapter_vlpet.memory as memory

    monkeypatch.setattr(memory, "measure_isolated", fake)
    out = tmp_path / "memory.json"
    assert main(["memory", "--methods", "vl-pet-large,full-finetune", "--batch-size", "4",
                 "--config-overrides", '{"d_model": 32}', "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert [c[1] for c in calls] == ["vl-pet-large", "full-finetune"]
    assert calls[0][3]["n_vis_tokens"] == 36 and calls[0][3]["config_overrides"] == {"d_model": 32}
    assert "vl-pet-large / full-finetune: peak 0.50x, step memory 0.33x, step time 0.50x" in text
    assert [r["method"] for r in json.loads(out.read_text())] == ["vl-pet-large", "full-finetune"]
    assert main(["memory", "--config-overrides", "{bad"]) == 2


def test_train_errors_are_one_line_with_status_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "optim.epochs=0", f"run.output_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "optim.epochs=0 is not allowed" in err
    assert main(["train", "--config", "/no/such/file.yaml"]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["train", "model.backbone=t5-base", "method.preset=vl-adapter-glarge-lw", "data.root=/nowhere",
                 f"run.output_dir={tmp_path / 'run'}"]) == 2
    assert "is not available for backbone 't5-base'" in capsys.readouterr().err
    assert main(["train", "data.root=/nowhere", f"run.output_dir={tmp_path / 'run'}"]) == 2  # no tokenizer, no weights
    assert "model.tokenizer and model.pretrained are both null" in capsys.readouterr().err
    assert cli.recipe_files()["vl-pet-large-bart"].is_file()
