"""peft_core.runtime: configs from files + overrides, atomic checkpoints with RNG state, sharding, the NaN guard."""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from peft_core import add_adapter, make_config
from peft_core.io import load_tensor_file
from peft_core.results import RunResult
from peft_core.runtime.checkpointing import (
    LAST,
    TrainCheckpointError,
    adapters_state,
    capture_rng,
    load_adapters_state,
    read_checkpoint,
    restore_rng,
    resume_path,
    save_checkpoint,
)
from peft_core.runtime.cli import report_errors
from peft_core.runtime.config import ConfigError, dump_yaml, load_config
from peft_core.runtime.distributed import DistInfo, ShardSampler, gather_lists, sum_counts
from peft_core.runtime.session import NonFiniteLossError, check_finite, resolve_device, start_run
from torch import nn


@dataclass
class Optim:
    lr: float = 1e-3
    epochs: int = 3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    schedule: str | None = None


@dataclass
class Run:
    output_dir: str = "runs/x"
    amp: bool = True
    device: str = "cpu"
    seed: int = 7


@dataclass
class Root:
    optim: Optim = field(default_factory=Optim)
    run: Run = field(default_factory=Run)

    def validate(self) -> None:
        if self.optim.epochs <= 0:
            raise ConfigError(f"optim.epochs={self.optim.epochs} is not allowed; expected a number > 0")


def test_defaults_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1\n  betas: [0.5, 0.6]\nrun:\n  amp: false\n")
    config = load_config(Root, path, ["optim.epochs=7", "optim.schedule=cosine", "run.output_dir=out"])
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)  # an int passes as a float
    assert config.optim.betas == [0.5, 0.6]
    assert (config.optim.epochs, config.optim.schedule, config.run.amp, config.run.output_dir) == (7, "cosine",
                                                                                                  False, "out")
    assert load_config(Root, None, ["optim.schedule=null"]).optim.schedule is None
    assert "epochs: 3" in dump_yaml(Root())


@pytest.mark.parametrize(("overrides", "message"), [
    (["optim.lr=fast"], r"optim\.lr='fast' \(str\) is not allowed; expected <class 'float'>"),
    (["optim.momentum=0.9"], r"unknown key\(s\) \['optim\.momentum'\]"),
    (["model.name=x"], r"unknown section\(s\) \['model'\]"),
    (["optim.epochs=0"], r"optim\.epochs=0 is not allowed"),
    (["optim.epochs"], r"expected section\.key=value"),
    (["run.amp=3"], r"run\.amp=3 \(int\) is not allowed; expected <class 'bool'>"),
])
def test_bad_values_name_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(Root, None, overrides)


def test_bad_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Root, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ConfigError, match=r"bad\.json: not valid JSON"):
        load_config(Root, bad)


def test_checkpoint_round_trip_with_rng_and_adapters(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    add_adapter(model, make_config("lora", r=2, target_modules=["0", "2"]))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    payload = {"format": "test/1", "adapters": adapters_state(model), "rng": capture_rng(), "epoch": 3}
    expected = (torch.rand(3), np.random.rand(2), random.random())
    save_checkpoint(tmp_path / LAST, payload)
    assert [p.name for p in tmp_path.iterdir()] == [LAST]  # no temporary file left behind

    loaded = read_checkpoint(tmp_path / LAST, "test/1")
    restore_rng(loaded["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(2), expected[1]) and random.random() == expected[2]

    other = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    add_adapter(other, make_config("lora", r=2, target_modules=["0", "2"]))
    load_adapters_state(other, loaded["adapters"], "ckpt")
    for name, state in adapters_state(other).items():
        assert all(torch.equal(v, payload["adapters"][name][k]) for k, v in state.items())

    with pytest.raises(TrainCheckpointError, match=r"holds adapters \['default'\] but the model has \[\]"):
        load_adapters_state(nn.Linear(2, 2), loaded["adapters"], "ckpt")
    with pytest.raises(TrainCheckpointError, match=r"format 'test/1', expected 'other/1'\); use model\.weights"):
        read_checkpoint(tmp_path / LAST, "other/1", "use model.weights")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(TrainCheckpointError, match=r"junk\.pt: cannot be read"):
        read_checkpoint(tmp_path / "junk.pt", "test/1")
    with pytest.raises(TrainCheckpointError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "none.pt", "test/1")


def test_resume_path(tmp_path: Path) -> None:
    assert resume_path("auto", tmp_path) is None
    (tmp_path / LAST).write_bytes(b"")
    assert resume_path("auto", tmp_path) == tmp_path / LAST
    assert resume_path("none", tmp_path) is None
    assert resume_path("/x/y.pt", tmp_path) == Path("/x/y.pt")


def test_shards_cover_every_item_once_and_single_process_reductions() -> None:
    shards = [list(ShardSampler(10, DistInfo(rank, 3, rank))) for rank in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(10))
    assert [len(s) for s in shards] == [4, 3, 3]
    assert sum_counts([1.0, 2.0], DistInfo(), torch.device("cpu")) == [1.0, 2.0]
    assert gather_lists([1, 2], DistInfo()) == [1, 2]


def test_non_finite_loss_stops_loudly() -> None:
    assert check_finite(torch.tensor(1.5), "step 1") == 1.5
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 2, step 5"):
        check_finite(torch.tensor(float("nan")), "epoch 2, step 5")
    with pytest.raises(NonFiniteLossError, match="loss is inf"):
        check_finite(float("inf"), "step 0")
    assert resolve_device("cpu") == torch.device("cpu")


def test_start_run_writes_config_and_log_and_seeds_per_rank(tmp_path: Path) -> None:
    config = Root(run=Run(output_dir=str(tmp_path / "run")))
    log = logging.getLogger("test_runtime.start_run")
    out, device, amp = start_run(log, config, DistInfo(rank=1, world_size=2))
    first = torch.rand(3)
    assert not (tmp_path / "run").exists(), "only the main process writes the output folder"
    out, device, amp = start_run(log, config, DistInfo())
    assert (out, device, amp) == (tmp_path / "run", torch.device("cpu"), False), "AMP is CUDA-only"
    assert load_config(Root, out / "config.yaml") == config
    log.info("hello")
    assert "hello" in (out / "log.txt").read_text()
    torch.manual_seed(config.run.seed + 1)
    assert torch.equal(first, torch.rand(3)), "rank 1 is seeded with run.seed + 1"
    start_run(log, config, DistInfo(rank=1, world_size=2), seed_per_rank=False, write_config=False, log_file=None)
    second = torch.rand(3)
    torch.manual_seed(config.run.seed)
    assert torch.equal(second, torch.rand(3)), "evaluation seeds every rank with run.seed"


def test_report_errors_prints_one_line_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    def bad() -> None:
        raise ConfigError("cfg.yaml: optim.lr=-1 is not allowed\nsecond line")

    assert report_errors(bad, (ConfigError,)) == 2
    assert capsys.readouterr().err == "error: cfg.yaml: optim.lr=-1 is not allowed\n  second line\n"
    assert report_errors(lambda: None, (ConfigError,)) == 0
    assert report_errors(lambda: 3, (ConfigError,)) == 3
    with pytest.raises(KeyError):  # not a user error: the traceback stays
        report_errors(lambda: {}["x"], (ConfigError,))


def test_load_tensor_file_names_the_file(tmp_path: Path) -> None:
    state = {"w": torch.arange(4.0)}
    torch.save(state, tmp_path / "a.pt")
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "a.safetensors"))
    for name in ("a.pt", "a.safetensors"):
        assert torch.equal(load_tensor_file(tmp_path / name, ValueError, "weights")["w"], state["w"])
    with pytest.raises(ValueError, match=r"missing.pt: upstream checkpoint not found"):
        load_tensor_file(tmp_path / "missing.pt", ValueError, "upstream checkpoint")
    (tmp_path / "bad.pt").write_text("not a checkpoint")
    with pytest.raises(TrainCheckpointError, match=r"bad.pt: cannot be read as a checkpoint"):
        load_tensor_file(tmp_path / "bad.pt", TrainCheckpointError, "checkpoint")


def test_result_table_lists_metrics_details_and_counts() -> None:
    result = RunResult(system="s", task="t", dataset="d", split="test", method="m", backbone="b",
                       metrics={"rsum": 512.25}, trainable_params=1_000, total_params=4_000, package_version="0",
                       wall_time_s=3.0)
    text = result.table([("images", "1000")])
    for expected in ("s: m on d/test (b)", "rsum", "512.25", "images", "1,000 (25.000%)", "4,000", "3.0 s"):
        assert expected in text, expected
    assert "peak memory" not in text


@pytest.mark.parametrize(("key", "value", "message"), [
    ("resume", "nowhere.pt", r"run.resume='nowhere.pt': expected 'auto', 'none' or an existing checkpoint file"),
    ("device", "tpu", r"run.device='tpu' is not allowed"),
    ("stop_after", 0, r"run.stop_after=0 is not allowed"),
    ("eval_every", -1, r"run.eval_every=-1 is not allowed"),
])
def test_shared_run_section_checks_name_the_key(key: str, value: object, message: str) -> None:
    from dataclasses import replace

    from peft_core.runtime.config import RunSection

    RunSection().check()
    with pytest.raises(ConfigError, match=message):
        replace(RunSection(), **{key: value}).check()


def test_run_in_fresh_process_returns_the_childs_json_and_names_a_failure(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from peft_core.memory import run_in_fresh_process

    (tmp_path / "child_probe.py").write_text(
        "import json, os, sys\n"
        "spec = json.loads(sys.argv[1])\n"
        "if spec.get('fail'):\n"
        "    sys.exit('boom: ' + spec['fail'])\n"
        "print('noise before the result')\n"
        "print(json.dumps({'pid': os.getpid(), 'double': 2 * spec['x']}))\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    out = run_in_fresh_process("child_probe", {"x": 21}, "the probe")
    assert out["double"] == 42 and out["pid"] != os.getpid(), "a separate interpreter"
    with pytest.raises(RuntimeError, match=r"measuring the probe failed \(exit 1\):\nboom: bad spec"):
        run_in_fresh_process("child_probe", {"x": 1, "fail": "bad spec"}, "the probe")
