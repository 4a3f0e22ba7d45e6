"""The ``vse-infty`` command: help, config, params at real size, memory, one-line errors with exit status 2."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from data_fixtures import write_f30k
from vse_infty import memory as memory_module
from vse_infty.cli import main
from vse_infty.config import TrainConfig, from_dict, load_config
from vse_infty.reporting import backbone_name, dataset_name, make_result, split_name
from vse_infty.testing import tiny_method_config, tiny_model_config


def test_help_runs_as_a_module() -> None:
    proc = subprocess.run([sys.executable, "-m", "vse_infty", "--help"], capture_output=True, text=True, timeout=120,
                          check=False, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "usage: vse-infty" in proc.stdout
    for command in ("train", "eval", "compare", "params", "memory", "config", "demo"):
        assert command in proc.stdout


def test_config_prints_the_defaults_as_yaml(capsys: pytest.CaptureFixture) -> None:
    assert main(["config"]) == 0
    assert from_dict(yaml.safe_load(capsys.readouterr().out)) == TrainConfig()


def test_params_counts_the_upstream_unipt_side_networks(capsys: pytest.CaptureFixture) -> None:
    """Real-size ResNeXt-101 32x8d + BERT-base on the meta device: the side networks have exactly the upstream
    sizes (shared/baselines/unipt.toml: 6.43M image, 5.92M text); the heads are the two GPOs."""
    assert main(["params", "--method", "unipt", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["towers"]["image"]["method"] == 6_433_537
    assert payload["towers"]["text"]["method"] == 5_921_281
    heads = payload["towers"]["image"]["heads"] + payload["towers"]["text"]["heads"]
    assert payload["trainable"] == 6_433_537 + 5_921_281 + heads
    assert payload["backbone"] == "resnext101-wsl+bert-base"
    assert main(["params", "--method", "frozen", "model.image_source=precomp"]) == 0
    assert "precomp-regions+bert-base" in capsys.readouterr().out


def _error_line(capsys: pytest.CaptureFixture) -> str:
    """The one ``error: ...`` line of stderr (log lines may precede it, indented details follow it); no
    traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def test_errors_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "optim.epochs=-1"]) == 2
    assert "optim.epochs=-1" in _error_line(capsys)
    assert main(["train", "--config", str(tmp_path / "absent.yaml")]) == 2
    assert "absent.yaml: config file not found" in _error_line(capsys)
    assert main(["train", f"data.root={tmp_path / 'nowhere'}", "run.device=cpu",
                 f"run.output_dir={tmp_path / 'out'}"]) == 2
    assert "nowhere: dataset folder not found" in _error_line(capsys)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert main(["eval", "--checkpoint", str(tmp_path / "junk.pt")]) == 2
    assert "junk.pt: cannot be read" in _error_line(capsys)
    with pytest.raises(SystemExit) as info:
        main(["fly"])
    assert info.value.code == 2


def test_train_reports_a_malformed_caption_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_f30k(tmp_path / "f30k", {"train": 2, "dev": 1, "test": 1})
    lines = (root / "precomp" / "train_caps.txt").read_text().splitlines()
    (root / "precomp" / "train_caps.txt").write_text("\n".join(lines[:-1]) + "\n")  # 9 captions for 2 images
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"data": {"root": str(root)}, "run": {"device": "cpu"}}))
    assert main(["train", "--config", str(config), f"run.output_dir={tmp_path / 'out'}"]) == 2
    assert "train_caps.txt: 9 captions is not a multiple of 5" in _error_line(capsys)


def test_memory_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """``vse-infty memory`` on the tiny towers; the measurement runs in this process instead of one fresh process
    per method (vse_infty.memory's own tests cover the subprocess), to keep the test fast."""
    calls: list[str] = []

    def in_process(model_cfg, method_cfg, batch_size=2, input_size=None, device="cpu", **options):
        calls.append(method_cfg.name)
        return memory_module.measure_train_step(model_cfg, method_cfg, batch_size, input_size, device, **options)

    monkeypatch.setattr(memory_module, "measure_in_subprocess", in_process)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"model": dataclasses.asdict(tiny_model_config()),
                                      "method": dataclasses.asdict(tiny_method_config("unipt"))}))
    out = tmp_path / "memory.json"
    assert main(["memory", "--config", str(config), "--methods", "unipt,full-finetune", "--output", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert calls == [r["method"] for r in rows] == ["unipt", "full-finetune"]
    assert rows[0]["trainable"] < rows[1]["trainable"] <= rows[1]["total"]
    assert all(r["peak_mb"] >= r["before_mb"] > 0 for r in rows)
    printed = capsys.readouterr().out
    assert "step peak MiB" in printed and "unipt" in printed and "full-finetune" in printed


def test_compare_matches_the_upstream_rows_for_the_recipe_names(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    """A result named as a run of the shipped Flickr30K recipe sits beside the upstream VSE-infty row."""
    config = load_config("f30k_full_finetune")
    metrics = {"i2t_r1": 88.0, "i2t_r5": 98.0, "i2t_r10": 99.0, "t2i_r1": 74.0, "t2i_r5": 93.0, "t2i_r10": 96.0}
    result = make_result(dataset=dataset_name(config.data.dataset),
                         split=split_name(config.data.dataset, config.data.resolved_test_split(), False),
                         method=config.method.name, backbone=backbone_name(config.model),
                         metrics={**metrics, "rsum": sum(metrics.values())}, trainable=10, total=20, seed=0,
                         wall_time_s=1.0, peak_mb=None, extra={})
    path = result.write(tmp_path / "result.json")
    assert main(["compare", str(path), "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "FLAGGED" not in out and "88.4" in out and "74.2" in out and "-0.4" in out
    coco = load_config("coco_unipt")
    assert split_name(coco.data.dataset, coco.data.resolved_test_split(), True) == "test_1k"
    assert backbone_name(coco.model) == "resnext101-wsl+bert-base"
