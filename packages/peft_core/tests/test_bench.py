"""The benchmark plumbing (``peft_core.bench``) on a toy model: planning, one measurement in and out of a fresh
process, the ratios, the JSON / Markdown / PNG writers and the command line. No timing is checked."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from peft_core.bench import configs as C
from peft_core.bench import report
from peft_core.bench.cli import main as bench_main
from peft_core.bench.measure import run_config, run_safely
from peft_core.bench.runner import Isolation
from peft_core.memory import CpuMemoryProbe

TOY = "toy-transformer"


def toy_config(method: str, impl: str = "peft_core", **kw) -> C.BenchConfig:
    base = dict(warmup=1, steps=2, threads=1)
    base.update(kw)
    return C.BenchConfig(TOY, method, impl, batch=2, seq_len=6, target_len=4, **base)


# ---------------------------------------------------------------------------------------------------- planning
def test_family_mismatch():
    bart = C.get_spec("bart-base-vl36")
    assert C.family_mismatch("vlpet-large-t5", bart) == "t5"
    assert C.family_mismatch("vlpet-large-bart", bart) is None
    assert C.family_mismatch("lora", bart) is None
    assert C.family_mismatch("unipt_vse_text", C.get_spec("bert-base")) is None


def test_resolve_methods_patterns():
    own, peft, unmatched = C.resolve_methods(["full", "frozen", "lor?", "no-such-preset*", "peft:lora", "peft:zzz*"])
    assert own[:2] == ["full", "frozen"]
    assert "lora" in own
    assert "lora" in peft
    assert unmatched == ["no-such-preset*", "peft:zzz*"]


def test_plan_skips_with_reasons():
    spec = C.get_spec(TOY)
    configs, skips = C.plan([spec], ["full", "frozen", "lora", "unipt-vse-image", "lst-vl-t5", "peft:lora", "nope*"],
                            C.Shape(2, 6, 4), warmup=1, steps=2)
    methods = [(c.method, c.impl) for c in configs]
    assert ("full", "reference") in methods and ("frozen", "reference") in methods
    assert ("lora", "peft_core") in methods
    skipped = {(s.method, s.impl): s.reason for s in skips}
    assert skipped[("nope*", "peft_core")] == "no preset registered at run time matches 'nope*'"
    assert skipped[("unipt-vse-image", "peft_core")].startswith("does not apply: TargetError")  # no CNN stages
    assert skipped[("lst-vl-t5", "peft_core")] == "preset is for t5, this model is torch"
    # Hugging Face PEFT is either measured next to lora or skipped with a reason, never silently dropped
    assert ("lora", "hf_peft") in methods or skipped[("lora", "hf_peft")]
    assert all(c.batch == 2 and c.seq_len == 6 and c.steps == 2 for c in configs)


def test_config_json_round_trip():
    cfg = toy_config("lora", overrides={"r": 4})
    again = C.BenchConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert again.key == (TOY, False, 2, 6, 4)


# ---------------------------------------------------------------------------------------------------- measuring
def test_memory_probe_sees_a_peak():
    probe = CpuMemoryProbe()
    before = probe.current()
    probe.start_window()
    x = torch.ones(16 * 1024 * 1024)  # 64 MiB, touched
    x.add_(1)
    del x
    peak = probe.peak()
    assert probe.method in ("rss-hwm", "rss-sampled")
    assert peak - before >= 48 * 1024 * 1024


def test_run_config_in_process_counts_parameters():
    rows = {m: run_config(toy_config(m, "reference" if m in C.REFERENCES else "peft_core"))
            for m in ("full", "frozen", "lora")}
    for row in rows.values():
        assert row["status"] == "ok"
        assert row["steps"] == len(row["step_times_s"]) == 2
        assert row["step_s"] > 0 and math.isfinite(row["loss"])
        for key in ("peak_mb", "static_mb", "transient_mb", "baseline_mb"):
            assert math.isfinite(row[key])
        assert row["peak_mb"] >= row["static_mb"]
    assert rows["full"]["trainable"] == rows["full"]["total"] > 0
    assert rows["frozen"]["trainable"] == 0
    assert 0 < rows["lora"]["trainable"] < rows["lora"]["total"]
    assert rows["lora"]["total"] - rows["lora"]["trainable"] == rows["full"]["total"]


def test_failure_becomes_an_error_row():
    row = run_safely(toy_config("no-such-preset"))
    assert row["status"] == "error"
    assert "no-such-preset" in row["note"]


def test_subprocess_timeout_becomes_an_error_row():
    row = Isolation("subprocess").run(toy_config("lora"), timeout=0.2)
    assert row["status"] == "error" and row["note"].startswith("timeout")


# ------------------------------------------------------------------------------------------------------ ratios
def _row(method: str, impl: str, peak: float, step: float, pct: float, model: str = "m") -> dict:
    return {"model": model, "method": method, "impl": impl, "vl": False, "batch": 2, "seq_len": 8, "target_len": 4,
            "status": "ok", "peak_mb": peak, "step_s": step, "trainable": int(pct * 10), "trainable_percent": pct,
            "note": ""}


def test_ratios_to_full_and_frozen():
    rows = [_row("full", "reference", 400.0, 2.0, 100.0), _row("frozen", "reference", 100.0, 0.5, 0.0),
            _row("lora", "peft_core", 200.0, 1.0, 0.5), _row("lora", "hf_peft", 300.0, 1.5, 0.5),
            _row("lora", "peft_core", 50.0, 1.0, 0.5, model="other")]
    report.add_ratios(rows)
    lora, peft = rows[2], rows[3]
    assert lora["mem_vs_full"] == pytest.approx(0.5) and lora["mem_vs_frozen"] == pytest.approx(2.0)
    assert lora["time_vs_full"] == pytest.approx(0.5) and lora["time_vs_frozen"] == pytest.approx(2.0)
    assert peft["mem_vs_full"] == pytest.approx(0.75)
    assert rows[0]["mem_vs_full"] == pytest.approx(1.0) and rows[1]["mem_vs_frozen"] == pytest.approx(1.0)
    assert rows[4]["mem_vs_full"] is None  # no reference measured for that model


def test_order_puts_references_first_and_peft_next_to_its_preset():
    rows = [_row("lora", "hf_peft", 1, 1, 1), {"model": "m", "method": "x", "impl": "peft_core", "status": "skipped",
                                               "note": "r"},
            _row("lora", "peft_core", 1, 1, 1), _row("full", "reference", 1, 1, 100),
            _row("frozen", "reference", 1, 1, 0), _row("bitfit", "peft_core", 1, 1, 1)]
    ordered = [(r["method"], r["impl"]) for r in report.order_rows(rows, ["m"])]
    assert ordered == [("frozen", "reference"), ("full", "reference"), ("lora", "peft_core"), ("lora", "hf_peft"),
                       ("bitfit", "peft_core"), ("x", "peft_core")]


# ----------------------------------------------------------------------------------------------------- writers
def test_markdown_table_has_every_row_and_reasons():
    rows = report.add_ratios([_row("full", "reference", 400.0, 2.0, 100.0), _row("frozen", "reference", 100, .5, 0),
                              _row("lora", "hf_peft", 300.0, 1.5, 0.5)])
    rows.append({"model": "m", "method": "prompt", "impl": "peft_core", "status": "skipped",
                 "note": "does not apply: a|b"})
    rows.append({"model": "m", "method": "prefix", "impl": "peft_core", "status": "error", "note": "boom"})
    table = report.markdown_table(rows).splitlines()
    assert len(table) == 2 + len(rows)
    assert all(line.count(" | ") == len(report.COLUMNS) - 1 for line in table[:1])
    assert "| m | lora | HF PEFT | 5 | 0.5% | 300 | 0.75 | 3.00 | 1,500 | 0.75 | 3.00 |  |" in table
    assert "skipped: does not apply: a\\|b" in table[-2]
    assert "error: boom" in table[-1]


def test_json_and_plot_writers(tmp_path: Path):
    rows = report.add_ratios([_row("full", "reference", 400.0, 2.0, 100.0), _row("frozen", "reference", 100, .5, 0),
                              _row("lora", "peft_core", 200.0, 1.0, 0.5), _row("lora", "hf_peft", 300, 1.5, 0.5)])
    env = report.environment("cpu", 1, "forkserver")
    report.write_json(tmp_path / "results.json", rows, env)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["environment"]["torch"] == torch.__version__ and data["environment"]["cpu_count"]
    assert [r["method"] for r in data["rows"]] == ["full", "frozen", "lora", "lora"]
    report.plot_memory_vs_trainable(rows, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------------ command line
def test_command_line_end_to_end(tmp_path: Path, capsys):
    """Every configuration in a fresh forked process; outputs written; unknown patterns reported in the table;
    Hugging Face PEFT's LoRA (when peft is installed) on the same modules as peft_core's."""
    with_peft = importlib.util.find_spec("peft") is not None
    code = bench_main(["--models", TOY, "--methods", "full", "frozen", "lora", "nothing-registered*", "peft:lora",
                       "--batch", "2", "--seq-len", "6", "--warmup", "1", "--steps", "2", "--threads", "1",
                       "--out", str(tmp_path)])
    assert code == 0
    data = json.loads((tmp_path / "results.json").read_text())
    rows = {(r["method"], r["impl"]): r for r in data["rows"]}
    expected = {("frozen", "reference"), ("full", "reference"), ("lora", "peft_core")}
    assert {k for k, r in rows.items() if r["status"] == "ok"} == expected | ({("lora", "hf_peft")} if with_peft
                                                                               else set())
    assert rows[("lora", "peft_core")]["mem_vs_full"] is not None
    if with_peft:
        assert rows[("lora", "hf_peft")]["trainable"] == rows[("lora", "peft_core")]["trainable"] > 0
    else:
        assert rows[("lora", "hf_peft")]["note"] == "peft is not installed (install the bench extra)"
    assert rows[("nothing-registered*", "peft_core")]["status"] == "skipped"
    assert rows[("nothing-registered*", "peft_core")]["model"] == TOY
    table = (tmp_path / "results.md").read_text()
    assert "nothing-registered*" in table and "| toy-transformer | lora | peft_core |" in table
    assert (tmp_path / "memory_vs_trainable.png").is_file() and (tmp_path / "bench.log").is_file()
    assert len(list((tmp_path / "logs").iterdir())) == len(expected) + with_peft
    assert "| model | method | impl |" in capsys.readouterr().out
