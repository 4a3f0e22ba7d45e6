"""Gate statistics: the opt-in recorder of peft_core's VL-PET layers, merging, padding, the report files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from peft_core.tuners.vlpet.layer import GateRecorder
from vl_adapter_vlpet.gates import collect_gate_statistics, gate_sites, merge_summaries, recording, write_gate_report
from vl_adapter_vlpet.models import MethodConfig, build_model
from vl_adapter_vlpet.testing import TINY_METHOD_OVERRIDES, tiny_model_config

VOCAB = 64


def tiny(preset: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = tiny_model_config("bart-base", feat_dim=16, n_vis_tokens=4, config_overrides={"vocab_size": VOCAB})
    bundle = build_model(cfg, MethodConfig(preset=preset, overrides=TINY_METHOD_OVERRIDES.get(preset, {})),
                         dropout=0.0)
    return bundle.model.eval()


def batch(lengths: list[int], width: int | None = None, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    width = width or max(lengths)
    ids = torch.full((len(lengths), width), 1)  # BART pad id
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(4, VOCAB, (n,), generator=g)
    return {"input_ids": ids, "attention_mask": (ids != 1).long(),
            "vis_feats": torch.randn(len(lengths), 4, 16, generator=g), "vis_pos": torch.zeros(len(lengths), 4, 4)}


def test_recorder_matches_numpy_statistics_and_drops_padding() -> None:
    g = torch.rand(2, 3, 4, generator=torch.Generator().manual_seed(0))
    valid = torch.tensor([[True, True, False], [True, False, False]])
    rec = GateRecorder()
    rec.update(g, valid)
    rows = torch.cat([g[0, :2], g[1, :1]]).double()
    summary = rec.summary()
    assert (summary["rows"], summary["count"], summary["forwards"]) == (3, 12, 1)
    assert summary["mean"] == pytest.approx(float(rows.mean()))
    assert summary["std"] == pytest.approx(float(rows.std(unbiased=False)))
    assert (summary["min"], summary["max"]) == (pytest.approx(float(rows.min())), pytest.approx(float(rows.max())))
    assert summary["channel_mean"] == pytest.approx(rows.mean(dim=0).tolist())
    small = GateRecorder()
    small.update(torch.full((5, 1, 1), 0.25), valid=None)  # a per-sequence gate (small): one row per sequence
    assert small.summary()["rows"] == 5 and small.summary()["mean"] == pytest.approx(0.25)


def test_merging_two_shards_equals_one_pass() -> None:
    a, b = torch.rand(3, 5, 8), torch.rand(2, 4, 8)
    whole, parts = GateRecorder(), [GateRecorder(), GateRecorder()]
    whole.update(a)
    whole.update(b)
    parts[0].update(a)
    parts[1].update(b)
    raw = [{"forwards": r.forwards, "rows": r.rows, "count": r.count, "total": r.total, "total_sq": r.total_sq,
            "min": r.minimum, "max": r.maximum, "channel_sum": r.channel_sum.tolist()} for r in parts]
    merged, expected = merge_summaries(raw), whole.summary()
    for key in ("rows", "count", "mean", "std", "min", "max"):
        assert merged[key] == pytest.approx(expected[key]), key
    assert merged["channel_mean"] == pytest.approx(expected["channel_mean"])


def test_recording_leaves_outputs_unchanged_and_removes_its_hooks() -> None:
    model = tiny("vl-pet-large")
    inputs = batch([7, 4])
    sites = gate_sites(model)
    assert [s.key for s in sites] == ["0.attn", "0.ffn", "1.attn", "1.ffn"]
    layer_module = sites[0].layer._layer_module
    hooks_before = len(layer_module._forward_pre_hooks)
    with torch.no_grad():
        plain = model.encode(**inputs)[0].last_hidden_state
        with recording(sites):
            assert len(layer_module._forward_pre_hooks) > hooks_before  # reads the padding mask while recording
            recorded = model.encode(**inputs)[0].last_hidden_state
            assert all(s.layer.gate_recorder.forwards == 1 for s in sites)
    assert torch.equal(plain, recorded)
    assert len(layer_module._forward_pre_hooks) == hooks_before
    assert all(s.layer.gate_recorder is None for s in sites)


def test_padding_does_not_change_the_statistics() -> None:
    """G-large is per token: one sequence alone or padded to 12 tokens beside another gives the same statistics of
    its tokens (the padding rows are left out)."""
    model = tiny("vl-pet-large")
    alone = collect_gate_statistics(model, [batch([6], seed=3)], torch.device("cpu"))
    padded = batch([6], width=12, seed=3)
    with_pad = collect_gate_statistics(model, [padded], torch.device("cpu"))
    for a, b in zip(alone, with_pad, strict=True):
        assert a["rows"] == b["rows"] == 6 + 4  # text tokens + visual tokens
        assert a["mean"] == pytest.approx(b["mean"], abs=1e-6) and a["max"] == pytest.approx(b["max"], abs=1e-6)


def test_report_files_and_gate_shapes(tmp_path: Path) -> None:
    stats = {"vqa": collect_gate_statistics(tiny("vl-pet-large"), [batch([5, 3]), batch([4])], torch.device("cpu")),
             "gqa": collect_gate_statistics(tiny("vl-pet-small"), [batch([5, 3])], torch.device("cpu"),
                                            max_batches=1)}
    large, small = stats["vqa"][0], stats["gqa"][0]
    assert (large["forwards"], large["rows"], len(large["channel_mean"])) == (2, 5 + 3 + 4 + 3 * 4, 32)
    assert (small["forwards"], small["rows"], len(small["channel_mean"])) == (1, 2, 1)  # (B, 1, 1) gates
    assert 0.0 < large["min"] <= large["mean"] <= large["max"] < 1.0 and not math.isnan(large["std"])
    json_path, png = write_gate_report(stats, tmp_path, {"method": "vl-pet-large", "title": "test"})
    saved = json.loads(json_path.read_text())
    assert saved["method"] == "vl-pet-large" and [r["sublayer"] for r in saved["tasks"]["vqa"]] == [
        "attn", "ffn", "attn", "ffn"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_methods_without_gates_are_refused() -> None:
    with pytest.raises(ValueError, match="no VL-PET gate"):
        collect_gate_statistics(tiny("vl-adapter"), [batch([3])], torch.device("cpu"))
