"""Training runs on the tiny upstream-format fixture tree: exact resume, best-checkpoint selection, result files
named as shared/baselines/vl_pet.toml, evaluation of a checkpoint, run.init_from, the NaN guard, the engine parts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from data_fixtures import FEAT_DIM, FIXTURE_WORDS, write_image_tree
from peft_core.results import RunResult
from peft_core.runtime.session import NonFiniteLossError
from vl_adapter_vlpet import train as train_module
from vl_adapter_vlpet.checkpointing import BEST, LAST, TrainCheckpointError, read_checkpoint
from vl_adapter_vlpet.cli import main
from vl_adapter_vlpet.config import ConfigError, TrainConfig, load_config
from vl_adapter_vlpet.engine import generation_kwargs, linear_schedule, seq2seq_loss
from vl_adapter_vlpet.testing import TINY_CONFIGS, TINY_METHOD_OVERRIDES, tiny_tokenizer
from vl_adapter_vlpet.train import run_evaluation, run_training

PRESET = "vl-pet-large"


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vl_tree")
    data = write_image_tree(root / "datasets").root
    tiny_tokenizer("bart-base", root / "tokenizer", texts=FIXTURE_WORDS)
    return {"data": data, "tokenizer": root / "tokenizer"}


def tiny_config(tree: dict[str, Path], out: Path, *overrides: str, preset: str = PRESET) -> TrainConfig:
    """A CPU run of a 2 + 2 layer, d = 32 VL-BART on the fixture tree: VQA alone, batch 1 (2 steps per epoch), 2
    epochs, 4 visual tokens, dropout 0.1 (so the RNG state matters for resuming)."""
    return load_config(None, [
        "model.backbone=bart-base", f"model.tokenizer={tree['tokenizer']}",
        f"model.config_overrides={json.dumps(TINY_CONFIGS['bart-base'])}", f"model.feat_dim={FEAT_DIM}",
        "model.n_vis_tokens=4", "model.num_beams=2", "model.gen_max_length=6", f"method.preset={preset}",
        f"method.overrides={json.dumps(TINY_METHOD_OVERRIDES.get(preset, {}))}", f"data.root={tree['data']}",
        "data.tasks=[vqa]", "data.batch_size=1", "data.num_workers=0", "optim.epochs=2", "optim.lr=1e-2",
        "run.device=cpu", "run.progress=false", "run.tensorboard=false", f"run.output_dir={out}", *overrides])


def _trained(payload: dict) -> dict[str, torch.Tensor]:
    out = {f"trainable.{k}": v for k, v in payload.get("trainable", {}).items()}
    for name, state in payload["adapters"].items():
        out.update({f"{name}.{k}": v for k, v in state.items()})
    for i, state in payload["optimizer"]["state"].items():
        out.update({f"opt.{i}.{k}": v for k, v in state.items()})
    return out


def test_two_steps_resume_two_steps_equals_four_straight_steps(tree: dict[str, Path], tmp_path: Path) -> None:
    """Bit-exact on the CPU: weights, AdamW state, scheduler, losses (dropout on, so RNG states matter)."""
    common = ("run.eval_every=0", "run.final_test=false")
    assert run_training(tiny_config(tree, tmp_path / "straight", *common)) == {}
    assert run_training(tiny_config(tree, tmp_path / "resumed", *common, "run.stop_after=1")) is None
    first = read_checkpoint(tmp_path / "resumed" / LAST)
    assert (first["epoch"], first["global_step"]) == (0, 2)
    run_training(tiny_config(tree, tmp_path / "resumed", *common))
    straight, resumed = read_checkpoint(tmp_path / "straight" / LAST), read_checkpoint(tmp_path / "resumed" / LAST)
    assert straight["global_step"] == resumed["global_step"] == 4
    a, b = _trained(straight), _trained(resumed)
    assert a.keys() == b.keys() and len(a) > 20
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert straight["scheduler"]["last_epoch"] == resumed["scheduler"]["last_epoch"] == 4
    assert [h["loss"] for h in straight["history"]] == [h["loss"] for h in resumed["history"]]
    assert any(not torch.equal(v, _trained(first)[k]) for k, v in a.items() if k.startswith("vlpet."))
    assert "model" not in straight  # a PETL checkpoint holds the method's tensors, not the frozen backbone


def test_best_checkpoint_is_tested_and_last_on_request(tree: dict[str, Path], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation gets worse every epoch: the best (epoch 0) weights are tested, not the last ones (upstream
    src/multitask.py tested LAST); run.test_checkpoint=last keeps upstream's choice."""
    real = train_module.evaluate_split
    seen: list[torch.Tensor] = []

    def fake(session, datasets, desc, predictions_dir=None):
        vis = session.model.visual_embedding.feat_embedding[0].weight.detach().clone()
        if desc.startswith("val"):
            seen.append(vis)
            return {t: {"vqa_score": 90.0 - 10 * len(seen)} for t in datasets}
        tested.append(vis)
        return real(session, datasets, desc, predictions_dir)

    monkeypatch.setattr(train_module, "evaluate_split", fake)
    for choice in ("best", "last"):
        tested: list[torch.Tensor] = []
        out = tmp_path / choice
        results = run_training(tiny_config(tree, out, "optim.epochs=3", f"run.test_checkpoint={choice}"))
        best, last = read_checkpoint(out / BEST), read_checkpoint(out / LAST)
        assert best["epoch"] == 0 and last["epoch"] == 2
        assert results["vqa"].extra["best_epoch"] == 0
        assert results["vqa"].extra["tested"] == (BEST if choice == "best" else LAST)
        key = "modules_to_save.visual_embedding.feat_embedding.0.weight"
        assert torch.equal(best["adapters"]["vlpet"][key], seen[-3])
        assert torch.equal(tested[0], seen[-3] if choice == "best" else seen[-1])
        assert not torch.equal(seen[-3], seen[-1])


def test_multitask_results_predictions_logs_eval_and_compare(tree: dict[str, Path], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    results = run_training(tiny_config(tree, out, "data.tasks=[vqa, gqa, nlvr2, caption]", "optim.epochs=1",
                                       "data.batch_size=2", "run.tensorboard=true", "run.eval_before=true"))
    names = {t: (r.dataset, r.split, sorted(r.metrics)) for t, r in results.items()}
    assert names == {"vqa": ("vqa", "karpathy_test", ["vqa_score"]), "gqa": ("gqa", "test_dev", ["gqa_acc"]),
                     "nlvr2": ("nlvr2", "test", ["nlvr2_acc"]),
                     "caption": ("coco_caption", "karpathy_test", ["bleu4", "cider"]),
                     "average": ("average", "vqa+gqa+nlvr2+coco_caption", ["avg"])}
    main_metrics = [results["vqa"].metrics["vqa_score"], results["gqa"].metrics["gqa_acc"],
                    results["nlvr2"].metrics["nlvr2_acc"], results["caption"].metrics["cider"]]
    assert results["average"].metrics["avg"] == pytest.approx(sum(main_metrics) / 4)
    saved = RunResult.read(out / "results" / "coco_caption.json")
    assert (saved.system, saved.method, saved.backbone) == ("vl_pet", "vl-pet-large", "bart-base")
    assert saved.trainable_params < saved.total_params and saved.extra["adapter_params"] > 0
    assert set(saved.extra["before"]["test"]) == {"vqa", "gqa", "nlvr2", "caption"}
    predictions = json.loads((out / "predictions" / "nlvr2-test.json").read_text())
    assert len(predictions) == 4 and all(isinstance(v, str) for v in predictions.values())
    history = json.loads((out / "history.json").read_text())
    assert history[0]["steps"] == sum(history[0][f"steps_{t}"] for t in ("vqa", "gqa", "nlvr2", "caption"))
    assert set(history[0]["val"]) == {"vqa", "gqa", "nlvr2", "caption"}
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert "epoch 0:" in (out / "log.txt").read_text()

    again = run_evaluation(out / BEST, ["run.progress=false"], "test", tmp_path / "eval")
    assert {t: r.metrics for t, r in again.items()} == {t: r.metrics for t, r in results.items()}
    assert (tmp_path / "eval" / "results" / "average.json").is_file()

    capsys.readouterr()
    assert main(["compare", *map(str, sorted((out / "results").glob("*.json")))]) == 0
    assert "paper Table 2" in capsys.readouterr().out  # matched the VL-PET-large BART rows by name


def test_eval_of_a_config_with_an_upstream_checkpoint_reproduces_the_run(tree: dict[str, Path], tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    """Trained weights exported in upstream's VLBart key layout (models.to_upstream_state_dict), then
    ``vl-pet eval --config ... model.upstream_checkpoint=LAST.pth`` scores exactly what the run scored."""
    from vl_adapter_vlpet.models import to_upstream_state_dict

    out = tmp_path / "run"
    config = tiny_config(tree, out, "data.tasks=[vqa, nlvr2]", "optim.epochs=1", "run.eval_every=0",
                         "run.test_checkpoint=last")
    results = run_training(config)
    session = train_module.build_session(config, train_module.DistInfo(), tmp_path / "s", None)
    train_module.load_trainable_state(session.model, read_checkpoint(out / LAST), "last")
    torch.save(to_upstream_state_dict(session.model, "bart"), tmp_path / "LAST.pth")
    config_file = tmp_path / "run.json"
    config_file.write_text(json.dumps(config.to_dict()))
    assert main(["eval", "--config", str(config_file), f"model.upstream_checkpoint={tmp_path / 'LAST.pth'}",
                 "--output", str(tmp_path / "eval")]) == 0
    for task, split in (("vqa", "karpathy_test"), ("nlvr2", "test")):
        again = RunResult.read(tmp_path / "eval" / "results" / f"{results[task].dataset}.json")
        assert again.metrics == results[task].metrics
        predicted = (tmp_path / "eval" / "predictions" / f"{task}-{split}.json").read_text()
        assert predicted == (out / "predictions" / f"{task}-{split}.json").read_text()  # token for token
    assert "upstream checkpoint" in (tmp_path / "eval" / "log.txt").read_text()  # the load report is logged


def test_full_finetune_checkpoint_initialises_a_petl_run(tree: dict[str, Path], tmp_path: Path) -> None:
    """A full fine-tuning checkpoint holds the whole model; run.init_from loads its backbone under a PETL method."""
    run_training(tiny_config(tree, tmp_path / "full", "run.eval_every=0", "run.final_test=false", "optim.epochs=1",
                             preset="full-finetune"))
    payload = read_checkpoint(tmp_path / "full" / LAST)
    assert "model" in payload and payload["adapters"] == {}
    session = train_module.build_session(
        tiny_config(tree, tmp_path / "petl", f"run.init_from={tmp_path / 'full' / LAST}"), train_module.DistInfo(),
        tmp_path / "petl", None)
    state = session.model.state_dict()
    for key, value in payload["model"].items():
        assert torch.equal(state[key], value), key
    run_training(tiny_config(tree, tmp_path / "petl_src", "run.eval_every=0", "run.final_test=false",
                             "optim.epochs=1"))
    with pytest.raises(TrainCheckpointError, match="holds no full model"):
        train_module.load_init_weights(session.model, tmp_path / "petl_src" / LAST)
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(TrainCheckpointError, match=r"does not fit the VL model \(missing \['model\."):
        train_module.load_init_weights(session.model, tmp_path / "other.pt")


def test_non_finite_loss_stops_the_run_and_the_cli_says_so(tree: dict[str, Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    session = train_module.build_session(tiny_config(tree, tmp_path / "a"), train_module.DistInfo(), tmp_path, None)
    state = session.model.state_dict()
    fc1 = "model.model.encoder.layers.0.fc1.weight"
    state[fc1] = torch.full_like(state[fc1], float("nan"))
    torch.save({k: v for k, v in state.items() if ".petl." not in k}, tmp_path / "nan.pt")
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 0, step 0 \(task vqa"):
        run_training(tiny_config(tree, tmp_path / "b", f"run.init_from={tmp_path / 'nan.pt'}"))
    config_file = tmp_path / "nan.json"
    config_file.write_text(json.dumps(tiny_config(tree, tmp_path / "c", f"run.init_from={tmp_path / 'nan.pt'}")
                                      .to_dict()))
    assert main(["train", "--config", str(config_file)]) == 2
    assert "error: loss is nan at epoch 0" in capsys.readouterr().err


def test_cli_reports_missing_data_and_missing_wandb(tree: dict[str, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    config_file = tmp_path / "run.json"
    config_file.write_text(json.dumps(tiny_config(tree, tmp_path / "out").to_dict()))
    assert main(["train", "--config", str(config_file), f"data.root={empty}"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # the log goes to stderr too; the error is one line
    assert last.startswith("error: ") and str(empty) in last
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    with pytest.raises(ConfigError, match=r"run\.wandb=true but wandb is not installed"):
        run_training(tiny_config(tree, tmp_path / "w", "run.wandb=true", "optim.epochs=1"))
    assert main(["eval", "--checkpoint", str(tmp_path / "absent.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_loss_is_upstreams_per_sample_mean_with_answer_weights() -> None:
    logits = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[1, 2, -100], [4, -100, -100]])
    ce = torch.nn.functional.cross_entropy
    first = (ce(logits[0, 0:1], labels[0, 0:1]) + ce(logits[0, 1:2], labels[0, 1:2])) / 2
    second = ce(logits[1, 0:1], labels[1, 0:1])
    assert seq2seq_loss(logits, labels) == pytest.approx(float((first + second) / 2), rel=1e-6)
    weights = torch.tensor([0.3, 1.0])
    assert seq2seq_loss(logits, labels, weights) == pytest.approx(float((0.3 * first + second) / 2), rel=1e-6)
    with pytest.raises(ValueError, match=r"do not match labels"):
        seq2seq_loss(logits, labels[:, :2])


def test_schedule_and_decoding_settings_are_upstreams() -> None:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = linear_schedule(optimizer, warmup_steps=2, total_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    assert lrs == pytest.approx([0.0, 0.5, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8])
    assert generation_kwargs("caption", 5, 20) == {"num_beams": 5, "max_length": 40}
    assert generation_kwargs("tvc", 5, 20) == {"num_beams": 5, "max_length": 20}
    assert generation_kwargs("vqa", 5, 20) == {"num_beams": 1, "max_length": 20}


def test_torchrun_two_processes_train_and_score_every_item_once(tree: dict[str, Path], tmp_path: Path) -> None:
    """DDP on the CPU (gloo): the task loaders are split over the 2 processes, the evaluation is sharded without
    padding and the predictions gathered, so every test item is scored exactly once."""
    import os
    import subprocess

    out = tmp_path / "ddp"
    config_file = tmp_path / "ddp.json"
    config_file.write_text(json.dumps(tiny_config(tree, out, "data.tasks=[vqa, nlvr2]", "optim.epochs=1",
                                                  "run.eval_every=0").to_dict()))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "vl_adapter_vlpet", "train", "--config", str(config_file)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = RunResult.read(out / "results" / "nlvr2.json")
    assert result.extra["world_size"] == 2
    assert len(json.loads((out / "predictions" / "nlvr2-test.json").read_text())) == 4
    assert len(json.loads((out / "predictions" / "vqa-karpathy_test.json").read_text())) == 2
    history = result.extra["history"][0]
    # 2 VQA and 4 NLVR2 training items, batch 1 (NLVR2: max(1, 1 * 20 // 60)), half of each per process
    assert (history["steps_vqa"], history["steps_nlvr2"]) == (1, 2)
