"""Training runs on a tiny mp4 dataset: exact resume, best checkpoint is a copy, results, eval, CLI, config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft_core.results import RunResult
from peft_core.runtime.session import NonFiniteLossError
from video_swin_vpetl import train as train_module
from video_swin_vpetl.checkpointing import BEST, LAST, read_checkpoint
from video_swin_vpetl.cli import main
from video_swin_vpetl.config import ConfigError, load_config
from video_swin_vpetl.engine import EvalResult
from video_swin_vpetl.train import run_evaluation, run_training
from vsw_helpers import tiny_config, tiny_model


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fake official checkpoint of the tiny backbone (``state_dict`` wrapper, ``backbone.`` prefix)."""
    model = tiny_model(seed=11)
    state = {f"backbone.{k}": v for k, v in model.state_dict().items() if not k.startswith("head.")}
    path = tmp_path_factory.mktemp("pretrained") / "micro.pth"
    torch.save({"state_dict": state}, path)
    return path


def _flat(payload: dict) -> dict[str, torch.Tensor]:
    out = {f"head.{k}": v for k, v in payload["head"].items()}
    for name, state in payload["adapters"].items():
        out.update({f"{name}.{k}": v for k, v in state.items()})
    for i, state in payload["optimizer"]["state"].items():
        out.update({f"opt.{i}.{k}": v for k, v in state.items()})
    return out


def test_two_epochs_resume_equals_straight(mp4_dataset: Path, pretrained: Path, tmp_path: Path) -> None:
    """Two steps, stop, resume, two steps == four straight steps (2 steps per epoch; drop path and multi-scale
    crops on, so the RNG states and the per-(seed, epoch, index) sampling matter). Bit-exact on the CPU."""
    common = (f"model.pretrained={pretrained}", "run.final_test=false", "method.recipe=adaptformer-8+patt-kv-8")
    assert run_training(tiny_config(mp4_dataset, tmp_path / "straight", *common)) is not None
    assert run_training(tiny_config(mp4_dataset, tmp_path / "resumed", *common, "run.stop_after=1")) is None
    first = read_checkpoint(tmp_path / "resumed" / LAST)
    assert first["epoch"] == 0 and first["global_step"] == 2
    run_training(tiny_config(mp4_dataset, tmp_path / "resumed", *common))
    straight, resumed = read_checkpoint(tmp_path / "straight" / LAST), read_checkpoint(tmp_path / "resumed" / LAST)
    assert straight["epoch"] == resumed["epoch"] == 1
    a, b = _flat(straight), _flat(resumed)
    assert a.keys() == b.keys() and len(a) > 10
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [h["loss"] for h in straight["history"]] == [h["loss"] for h in resumed["history"]]
    assert not torch.equal(a["head.fc.weight"], _flat(first)["head.fc.weight"])


def test_best_checkpoint_is_a_copy_not_the_last_weights(mp4_dataset: Path, pretrained: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Upstream kept ``model_best = model`` (a reference), so its "best" was the last state."""
    snapshots: list[torch.Tensor] = []
    real_evaluate = train_module.evaluate

    def fake_evaluate(model: torch.nn.Module, loader, **kw) -> EvalResult:
        if kw.get("desc", "").startswith("val"):
            snapshots.append(model.head.fc.weight.detach().clone())
            top1 = 90.0 - 10 * len(snapshots)  # validation gets worse every epoch: the best is epoch 0
            return EvalResult(top1, 100.0, 4, 0, 0, 1)
        return real_evaluate(model, loader, **kw)

    monkeypatch.setattr(train_module, "evaluate", fake_evaluate)
    result = run_training(tiny_config(mp4_dataset, tmp_path / "run", f"model.pretrained={pretrained}",
                                      "optim.epochs=3"))
    best, last = read_checkpoint(tmp_path / "run" / BEST), read_checkpoint(tmp_path / "run" / LAST)
    assert best["epoch"] == 0 and last["epoch"] == 2 and result.extra["best_epoch"] == 0
    assert torch.equal(best["head"]["fc.weight"], snapshots[0])
    assert not torch.equal(best["head"]["fc.weight"], last["head"]["fc.weight"])


def test_result_eval_and_compare(mp4_dataset: Path, pretrained: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    result = run_training(tiny_config(mp4_dataset, out, f"model.pretrained={pretrained}", "run.eval_before=true"))
    saved = RunResult.read(out / "result.json")
    assert saved.system == "v_petl" and saved.method == "patt-kv-8" and saved.backbone == "video-swin-micro"
    assert saved.dataset == "synthetic" and saved.split == "test" and set(saved.metrics) == {"top1", "top5"}
    assert saved.extra["num_videos"] == 4 and saved.extra["views_per_video"] == 6
    assert saved.extra["unreadable_videos"] == [] and "test_top1_before" in saved.extra
    assert saved.trainable_params == result.trainable_params > saved.extra["adapter_params"]
    assert (out / "log.txt").read_text().count("epoch 1:") == 1

    (tmp_path / "corrupt.mp4").write_bytes(b"junk")
    lines = [*(mp4_dataset / "test.csv").read_text().splitlines(), f"{tmp_path / 'corrupt.mp4'},2"]
    (tmp_path / "test_plus.csv").write_text("\n".join(lines) + "\n")
    again = run_evaluation(out / BEST, [f"data.test_list={tmp_path / 'test_plus.csv'}",
                                        f"data.video_root={mp4_dataset}"], tmp_path / "eval.json")
    assert again.metrics == saved.metrics  # same weights, same views; the corrupt video is not counted
    assert [Path(u["path"]).name for u in again.extra["unreadable_videos"]] == ["corrupt.mp4"]
    assert again.extra["num_videos"] == 4

    assert main(["compare", str(out / "result.json")]) == 0
    assert "FLAGGED" in capsys.readouterr().out  # no upstream row for a synthetic dataset / micro backbone


def test_non_finite_loss_stops_the_run(mp4_dataset: Path, tmp_path: Path) -> None:
    state = {f"backbone.{k}": v for k, v in tiny_model().state_dict().items()}
    state["backbone.norm.weight"] = torch.full_like(state["backbone.norm.weight"], float("nan"))
    torch.save({"state_dict": state}, tmp_path / "nan.pth")
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 0, step 0"):
        run_training(tiny_config(mp4_dataset, tmp_path / "run", f"model.pretrained={tmp_path / 'nan.pth'}"))


def test_cli_reports_a_malformed_list(mp4_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "train.csv").write_text("videos/a.mp4,0\nvideos/b.mp4;1\n")
    config = tmp_path / "run.yaml"
    config.write_text(f"data:\n  root: {tmp_path}\n  dataset: synthetic\nmodel:\n  arch: video-swin-micro\n")
    assert main(["train", "--config", str(config), f"run.output_dir={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert "train.csv, line 2" in err and "'<video path>,<integer label>'" in err


def test_cli_help_config_recipe_and_params(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0 and "train" in capsys.readouterr().out
    assert main(["config"]) == 0 and "recipe: adaptformer-64+patt-kv-128" in capsys.readouterr().out
    assert main(["recipe", "readme"]) == 0 and "6,253,363" in capsys.readouterr().out
    assert main(["params", "--model", "video-swin-b", "--method", "patt-kv-m128", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trainable"] == 4_647_424


def test_config_files_overrides_and_errors(tmp_path: Path) -> None:
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("optim:\n  epochs: 5\n  blr: 1\nmethod:\n  recipe: patt-kv-64\n")
    config = load_config(yaml_file, ["optim.batch_size=8", "model.pretrained=null", "run.amp=false"])
    assert (config.optim.epochs, config.optim.blr, config.optim.batch_size) == (5, 1.0, 8)
    assert config.method.recipe == "patt-kv-64" and config.run.amp is False and config.optim.momentum == 0.9
    json_file = tmp_path / "c.json"
    json_file.write_text(json.dumps({"data": {"num_frames": 16}}))
    assert load_config(json_file).data.num_frames == 16
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['optim.epoch'\]"):
        load_config(None, ["optim.epoch=3"])
    with pytest.raises(ConfigError, match=r"optim\.epochs='x'"):
        load_config(None, ["optim.epochs=x"])
    with pytest.raises(ConfigError, match=r"expected section\.key=value"):
        load_config(None, ["epochs=3"])
    with pytest.raises(ConfigError, match=r"model\.head='mlp' is not allowed"):
        load_config(None, ["model.head=mlp"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")


def test_torchrun_two_processes_shard_and_sum_the_counts(mp4_dataset: Path, tmp_path: Path) -> None:
    """DDP on the CPU (gloo): 2 processes, DistributedSampler for training, evaluation sharded without padding and
    the counts summed: every readable test video counted exactly once, the unreadable one listed once."""
    import os
    import subprocess
    import sys

    lines = [*(mp4_dataset / "test.csv").read_text().splitlines(), f"{tmp_path / 'absent.mp4'},1"]
    (tmp_path / "test.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "video_swin_vpetl", "train", "model.arch=video-swin-micro", "data.dataset=synthetic",
           f"data.root={mp4_dataset}", f"data.test_list={tmp_path / 'test.csv'}", f"data.video_root={mp4_dataset}",
           "data.input_size=32", "data.train_short_side=36", "data.test_clips=2", "data.num_workers=0",
           "method.recipe=patt-kv-8", "optim.batch_size=2", "optim.epochs=1", "optim.lr=0.05",
           f"run.output_dir={out}", "run.progress=false", "run.device=cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = RunResult.read(out / "result.json")
    assert result.extra["world_size"] == 2
    assert result.extra["num_videos"] == 4
    assert [Path(u["path"]).name for u in result.extra["unreadable_videos"]] == ["absent.mp4"]
    assert result.extra["history"][0]["steps"] == 2  # 8 videos / (batch 2 x 2 processes)
