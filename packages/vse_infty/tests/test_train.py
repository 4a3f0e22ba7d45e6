"""Training runs on tiny towers and fixture data in the upstream layouts: exact resume, model selection on the
validation split only, NaN guard, results / eval / compare, the UniPT confidence plot, COCO 5-fold naming, DDP."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from data_fixtures import write_coco, write_f30k
from peft_core.results import RunResult
from peft_core.runtime.session import NonFiniteLossError
from vse_infty import train as train_module
from vse_infty.checkpointing import BEST, LAST, TrainCheckpointError, read_checkpoint
from vse_infty.cli import main
from vse_infty.config import TrainConfig, apply_overrides, from_dict
from vse_infty.testing import TINY_IMG_DIM, tiny_method_config, tiny_model_config, tiny_tokenizer
from vse_infty.train import run_evaluation, run_training

METRIC_KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "i2t_medr", "i2t_meanr", "t2i_r1", "t2i_r5", "t2i_r10", "t2i_medr",
               "t2i_meanr", "rsum")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Flickr30K layout (raw images + regions of width TINY_IMG_DIM): 8 train images (40 captions: 2 steps of
    20), 4 dev, 4 test; COCO layout with testall; a tokenizer directory."""
    root = tmp_path_factory.mktemp("vse_data")
    return {"f30k": write_f30k(root / "f30k", {"train": 8, "dev": 4, "test": 4}, feature_dim=TINY_IMG_DIM),
            "coco": write_coco(root / "coco", {"train": 4, "dev": 2, "testall": 10}, feature_dim=TINY_IMG_DIM),
            "tokenizer": _tokenizer_dir(root / "tokenizer")}


def _tokenizer_dir(path: Path) -> Path:
    tiny_tokenizer(path)
    return path


def tiny_config(data: dict[str, Path], out: Path, *overrides: str, method: str = "unipt",
                image_source: str = "backbone", dataset: str = "f30k") -> TrainConfig:
    """2 epochs of 2 steps (global batch 20) on the tiny towers, CPU, validation every epoch."""
    model = dataclasses.asdict(tiny_model_config(image_source, tokenizer=str(data["tokenizer"])))
    config = {"model": model, "method": dataclasses.asdict(tiny_method_config(method)),
              "data": {"dataset": dataset, "root": str(data[dataset]), "batch_size": 20, "eval_batch_size": 8,
                       "num_workers": 0, "max_length": 32},
              "optim": {"epochs": 2, "lr_update": 1},
              "run": {"output_dir": str(out), "device": "cpu", "progress": False, "log_every": 1}}
    return from_dict(apply_overrides(config, list(overrides)))


def _flat(payload: dict) -> dict[str, torch.Tensor]:
    out = {f"param.{k}": v for k, v in payload["params"].items()}
    out.update({f"buffer.{k}": v for k, v in payload["buffers"].items()})
    for host, adapters in payload["adapters"].items():
        for name, state in adapters.items():
            out.update({f"adapter.{host}.{name}.{k}": v for k, v in state.items()})
    for i, state in payload["optimizer"]["state"].items():
        out.update({f"opt.{i}.{k}": v for k, v in state.items()})
    return out


def test_two_steps_resume_two_steps_equals_four_straight_steps(data: dict[str, Path], tmp_path: Path) -> None:
    """UniPT (side BatchNorm statistics, dropout, grid dropping, caption augmentation, the epoch-1 loss ramp and the
    switch to hardest negatives all in play): stop after epoch 0, resume, bit-exact with a straight run."""
    common = ("run.final_test=false",)
    assert run_training(tiny_config(data, tmp_path / "straight", *common)) is not None
    assert run_training(tiny_config(data, tmp_path / "resumed", *common, "run.stop_after=1")) is None
    first = read_checkpoint(tmp_path / "resumed" / LAST)
    assert first["epoch"] == 0 and first["global_step"] == 2
    run_training(tiny_config(data, tmp_path / "resumed", *common))
    straight, resumed = read_checkpoint(tmp_path / "straight" / LAST), read_checkpoint(tmp_path / "resumed" / LAST)
    assert straight["epoch"] == resumed["epoch"] == 1
    a, b = _flat(straight), _flat(resumed)
    assert a.keys() == b.keys() and any(k.startswith("adapter.") for k in a) and any(".running_mean" in k for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [h["loss"] for h in straight["history"]] == [h["loss"] for h in resumed["history"]]
    assert [h["max_violation"] for h in straight["history"]] == [False, True]
    changed = _flat(first)
    assert any(not torch.equal(a[k], changed[k]) for k in a if k.startswith("adapter."))
    assert "resumed from" in (tmp_path / "resumed" / "log.txt").read_text()


def _fake_metrics(rsum: float) -> dict[str, float]:
    return {k: (rsum if k == "rsum" else 10.0) for k in METRIC_KEYS}


def test_best_checkpoint_is_chosen_on_validation_and_tested(data: dict[str, Path], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation rsum falls every epoch: epoch 0 is the best; the test split is evaluated once, at the end, with
    epoch 0's weights (a copy, not the last weights)."""
    real_evaluate = train_module.evaluate
    calls: list[str] = []
    snapshots: list[dict[str, torch.Tensor]] = []

    def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def fake_evaluate(model, split_data, tokenizer, transform, **kw):
        calls.append(kw["split"])
        snapshots.append(weights(model))
        if kw["split"] == "dev":
            return _fake_metrics(300.0 - 10 * len(calls)), {}
        return real_evaluate(model, split_data, tokenizer, transform, **kw)

    monkeypatch.setattr(train_module, "evaluate", fake_evaluate)
    result = run_training(tiny_config(data, tmp_path / "run", "optim.epochs=3"))
    assert calls == ["dev", "dev", "dev", "test"]
    best, last = read_checkpoint(tmp_path / "run" / BEST), read_checkpoint(tmp_path / "run" / LAST)
    assert best["epoch"] == 0 and last["epoch"] == 2 and result.extra["best_epoch"] == 0
    assert result.extra["val_rsum_best"] == 290.0
    for name, tensor in snapshots[-1].items():  # the test ran on epoch 0's weights
        assert torch.equal(tensor, snapshots[0][name]), name
    assert any(not torch.equal(snapshots[0][n], snapshots[2][n]) for n in snapshots[0])


def test_result_eval_compare_and_confidence_plot(data: dict[str, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    result = run_training(tiny_config(data, out, "run.eval_before=true"))
    saved = RunResult.read(out / "result.json")
    assert saved.system == "vse_infty" and saved.task == "retrieval" and saved.method == "unipt"
    assert (saved.dataset, saved.split) == ("f30k_retrieval", "test")
    assert saved.backbone == "resnext101-32x8d-custom+bert-from-config"  # a tiny test model, not upstream's
    assert set(saved.metrics) == set(METRIC_KEYS)
    assert saved.metrics["rsum"] == pytest.approx(sum(saved.metrics[k] for k in METRIC_KEYS if "_r" in k[3:5]))
    assert saved.trainable_params == result.trainable_params < saved.total_params
    assert set(saved.extra["test_before"]) == set(METRIC_KEYS) and saved.extra["num_images"] == 4
    log = (out / "log.txt").read_text()
    assert log.count("epoch 1: loss") == 1 and "hardest negatives" in log and "rsum" in log

    confidence = saved.extra["confidence"]  # mean UniPT weights per layer on dev at the best epoch
    assert sorted(confidence) == ["image", "text"]
    assert len(confidence["image"]) == 3 and len(confidence["text"]) == 2  # layer1..3; embeddings + layer 1
    for values in confidence.values():
        assert sum(values) == pytest.approx(1.0, abs=1e-4) and min(values) > 0
    png = (out / "confidence.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000

    again = run_evaluation(out / BEST, [], output=tmp_path / "eval.json")
    assert again.metrics == saved.metrics  # the checkpoint alone reproduces the run's test numbers
    assert RunResult.read(tmp_path / "eval.json").extra["checkpoint_epoch"] == saved.extra["best_epoch"]

    assert main(["compare", str(out / "result.json")]) == 0
    assert "FLAGGED" in capsys.readouterr().out  # no upstream row for the tiny towers


def test_frozen_method_saves_heads_by_name_and_refuses_another_method(data: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    result = run_training(tiny_config(data, tmp_path / "run", "optim.epochs=1", method="frozen"))
    assert result.extra["confidence"] == {} and not (tmp_path / "run" / "confidence.png").exists()
    payload = read_checkpoint(tmp_path / "run" / LAST)
    assert payload["adapters"] == {} and payload["params"]  # heads (GPO, fc, linear) by name
    assert all(not k.startswith(("image_encoder.backbone.", "text_encoder.backbone.")) for k in payload["params"])
    with pytest.raises(TrainCheckpointError, match="trained with method 'frozen'"):
        run_training(tiny_config(data, tmp_path / "run", "optim.epochs=2"))


def test_non_finite_loss_stops_the_run(data: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "nan"
    write_f30k(root, {"train": 8, "dev": 4, "test": 4}, feature_dim=TINY_IMG_DIM)
    ims = np.load(root / "precomp" / "train_ims.npy")
    np.save(root / "precomp" / "train_ims.npy", np.full_like(ims, np.nan))
    config = tiny_config({**data, "f30k": root}, tmp_path / "run", image_source="precomp", method="frozen")
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 0, step 0"):
        run_training(config)
    assert not (tmp_path / "run" / LAST).exists()


def test_coco_testall_is_reported_as_5fold_1k_with_5k_beside(data: dict[str, Path], tmp_path: Path) -> None:
    result = run_training(tiny_config(data, tmp_path / "run", "optim.epochs=1", "data.batch_size=10",
                                      image_source="precomp", dataset="coco", method="frozen"))
    assert (result.dataset, result.split) == ("coco_retrieval", "test_1k")
    assert result.extra["test_split"] == "testall" and result.extra["num_images"] == 10
    assert {f"coco5k_{k}" for k in METRIC_KEYS} <= set(result.metrics)
    assert result.backbone == "precomp-regions+bert-from-config"


def test_torchrun_two_processes_train_on_the_global_batch(data: dict[str, Path], tmp_path: Path) -> None:
    """DDP on the CPU (gloo), 2 processes x 10 pairs: the embeddings of both processes are gathered, so the
    negatives and the gradient are those of the global batch of 20; with dropout off the LoRA + head weights equal
    a single-process run's (up to float summation order). (Methods with trainable BatchNorms, e.g. UniPT's CNN side,
    normalise per process, as upstream's nn.DataParallel replicas did.)"""
    common = ["run.final_test=false", "optim.epochs=1", "model.drop_feature_rate=0.0"]
    text_config = {**tiny_model_config().text_config, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    config = tiny_config(data, tmp_path / "single", *common, method="lora")
    config.model.text_config = text_config
    run_training(config)
    yaml_file = tmp_path / "ddp.yaml"
    config.run.output_dir = str(tmp_path / "ddp")
    yaml_file.write_text(yaml.safe_dump(config.to_dict()))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "vse_infty",
           "train", "--config", str(yaml_file)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    single, ddp = read_checkpoint(tmp_path / "single" / LAST), read_checkpoint(tmp_path / "ddp" / LAST)
    assert ddp["history"][0]["steps"] == 2 and len(ddp["rng_per_rank"]) == 2
    a, b = _flat(single), _flat(ddp)
    assert a.keys() == b.keys()
    for key in a:
        if a[key].is_floating_point():
            torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    assert ddp["history"][0]["loss"] == pytest.approx(single["history"][0]["loss"], rel=1e-5)
