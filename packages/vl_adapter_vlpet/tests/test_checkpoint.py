"""Upstream VL-PET / VL-Adapter checkpoints: upstream-style state dicts made from our tiny models through the inverse
mapping load back bit for bit, keys carry upstream's names, and bad files give clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft_core.model import iter_layers
from peft_core.tuners.bitfit.layer import BiasDeltaLayer, NormDeltaLayer
from vl_adapter_vlpet.models import (
    MethodConfig,
    UpstreamCheckpointError,
    build_model,
    load_upstream_checkpoint,
    model_inputs,
    to_upstream_state_dict,
)
from vl_adapter_vlpet.models.upstream_keys import TASKS
from vl_adapter_vlpet.testing import TINY_METHOD_OVERRIDES, tiny_batch, tiny_model_config, tiny_tokenizer

ROUND_TRIP = [
    ("bart-base", "vl-pet-large"), ("bart-base", "vl-pet-small"), ("bart-base", "vl-pet-middlex"),
    ("bart-base", "vl-pet-middley"), ("bart-base", "vl-adapter"), ("bart-base", "compacter"), ("bart-base", "lora"),
    ("bart-base", "bitfit"), ("bart-base", "prompt-tuning"), ("bart-base", "full-finetune"),
    ("bart-base", "vl-adapter-glarge-lw"), ("bart-base", "compacter-glarge-lw"),
    ("t5-base", "vl-pet-large"), ("t5-base", "vl-pet-middley"), ("t5-base", "vl-adapter"), ("t5-base", "lora"),
    ("t5-base", "bitfit"), ("t5-base", "prompt-tuning"),
]

EXPECTED_KEYS = {  # upstream names (my_transformers / adapters / lora / prompt modules) for layer 0 / block 0
    ("bart-base", "vl-pet-large"): ["model.encoder.layers.0.attn_adapter_multihead_down.3.weight",
                                    "model.encoder.layers.0.ff_adapter_multihead_up.bias",
                                    "model.encoder.layers.0.encoder_attn_adapter_gating_large_x_down.weight",
                                    "model.encoder.layers.0.encoder_ff_adapter_gating_large_x_up.bias",
                                    "model.decoder.layers.1.encoder_attn.attn_value_parallel_adapter.adapters.nlvr."
                                    "up_sampler.weight", "model.encoder.visual_embedding.feat_embedding.0.weight",
                                    "lm_head.weight", "final_logits_bias", "model.shared.weight"],
    ("bart-base", "vl-pet-small"): ["model.encoder.layers.1.encoder_ff_adapter_gating_small_xy_cat.weight"],
    ("bart-base", "vl-pet-middlex"): ["model.encoder.layers.0.encoder_attn_adapter_gating_middle_xy_add.bias"],
    ("bart-base", "vl-pet-middley"): ["model.encoder.layers.0.encoder_attn_adapter_gating_middle_ia3_add"],
    ("bart-base", "vl-adapter"): ["model.encoder.layers.0.attn_adapter.adapters.vqa.down_sampler.weight",
                                  "model.decoder.layers.1.self_attn_adapter.adapters.gqa.up_sampler.bias",
                                  "model.decoder.layers.0.enc_attn_adapter.adapters.caption.down_sampler.bias",
                                  "model.decoder.layers.0.ff_adapter.adapters.vqa.up_sampler.weight"],
    ("bart-base", "compacter"): ["model.encoder.layers.0.ff_adapter.adapters.vqa.down_sampler.phm_rule",
                                 "model.decoder.layers.0.enc_attn_adapter.adapters.vqa.up_sampler.W"],
    ("bart-base", "lora"): ["model.encoder.layers.0.self_attn.q_proj.lora_As.vqa",
                            "model.decoder.layers.1.encoder_attn.v_proj.lora_Bs.caption"],
    ("bart-base", "prompt-tuning"): ["model.encoder.prompt_modules.prompts.vqa.prefix_embedding.0.weight",
                                     "model.encoder.prompt_modules.prompts.gqa.prefix_embedding.3.bias"],
    ("t5-base", "vl-pet-large"): ["encoder.block.0.layer.0.attn_adapter_multihead_down.0.weight",
                                  "encoder.block.1.layer.1.encoder_ff_adapter_gating_large_x_down.bias",
                                  "decoder.block.0.layer.1.EncDecAttention.attn_value_parallel_adapter.adapters.vqa."
                                  "down_sampler.weight", "encoder.visual_embedding.feat_embedding.1.weight",
                                  "shared.weight"],
    ("t5-base", "vl-adapter"): ["encoder.block.0.layer.0.attn_adapter.adapters.vqa.down_sampler.weight",
                                "encoder.block.0.layer.1.ff_adapter.adapters.vqa.up_sampler.bias",
                                "decoder.block.1.layer.1.enc_attn_adapter.adapters.vqa.up_sampler.bias",
                                "decoder.block.1.layer.2.ff_adapter.adapters.vqa.up_sampler.bias"],
    ("t5-base", "lora"): ["decoder.block.0.layer.1.EncDecAttention.q.lora_As.nlvr"],
    ("t5-base", "bitfit"): ["lm_head.bias", "encoder.block.0.layer.0.SelfAttention.q.bias"],
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, object]]:
    out = {}
    for backbone in ("bart-base", "t5-base"):
        folder = tmp_path_factory.mktemp(backbone)
        out[backbone] = (str(folder), tiny_tokenizer(backbone, folder))
    return out


def _bundle(folders: dict, backbone: str, method: str, seed: int, **model_kw: object):
    torch.manual_seed(seed)
    cfg = tiny_model_config(backbone, tokenizer=folders[backbone][0], feat_dim=16, n_vis_tokens=4, **model_kw)
    return build_model(cfg, MethodConfig(preset=method, overrides=TINY_METHOD_OVERRIDES.get(method, {})), dropout=0.0)


def _perturb(model: torch.nn.Module, seed: int) -> None:
    """Give every tensor (adapters, zero-initialised deltas included) a random value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.mark.parametrize("backbone,method", ROUND_TRIP)
def test_round_trip_through_upstream_names_is_bit_exact(folders: dict, backbone: str, method: str) -> None:
    family = backbone.split("-")[0]
    trained = _bundle(folders, backbone, method, seed=0).model.eval()
    _perturb(trained, seed=1)
    upstream = to_upstream_state_dict(trained, family)
    for key in EXPECTED_KEYS.get((backbone, method), []):
        assert key in upstream, key
    assert not any(".petl." in k for k in upstream)
    fresh = _bundle(folders, backbone, method, seed=5).model.eval()
    report = load_upstream_checkpoint(fresh, upstream, family)
    assert report.ok, report.table()
    assert len(report.loaded) + len(report.deltas_zeroed) == len(fresh.state_dict())
    again = to_upstream_state_dict(fresh, family)
    assert list(again) == list(upstream)
    for key, value in upstream.items():
        assert torch.equal(again[key], value), key
    # deltas on tensors the model has were merged into them upstream: loaded into the host, the delta zeroed; a bias
    # the host lacks (T5 BitFit) is a tensor of its own upstream and is loaded as it is
    deltas = [layer for _, host, layer in iter_layers(fresh) if isinstance(layer, NormDeltaLayer)
              or (isinstance(layer, BiasDeltaLayer) and isinstance(getattr(host, "bias", None), torch.Tensor))]
    assert all(not p.any() for layer in deltas for p in layer.parameters())
    added = [layer for _, _, layer in iter_layers(fresh)
             if isinstance(layer, BiasDeltaLayer) and all(layer is not d for d in deltas)]
    assert all(p.abs().sum() > 0 for layer in added for p in layer.parameters())
    assert bool(added) == ((backbone, method) == ("t5-base", "bitfit"))
    inputs = model_inputs(tiny_batch(folders[backbone][1]))
    with torch.no_grad():
        expected, got = trained(**inputs).logits, fresh(**inputs).logits
    if deltas:  # the deltas were merged into their hosts: same function, other rounding
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    else:
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_file_with_ddp_prefix_loads_through_build_model(folders: dict, tmp_path: Path) -> None:
    trained = _bundle(folders, "bart-base", "vl-pet-large", seed=0).model
    _perturb(trained, seed=2)
    upstream = {f"module.{k}": v for k, v in to_upstream_state_dict(trained, "bart").items()}
    torch.save(upstream, tmp_path / "LAST.pth")
    bundle = _bundle(folders, "bart-base", "vl-pet-large", seed=3, upstream_checkpoint=str(tmp_path / "LAST.pth"))
    assert bundle.load_report is not None and bundle.load_report.ok
    key = "model.model.encoder.layers.0.self_attn.petl.vlpet.gate.down.weight"
    assert torch.equal(bundle.model.state_dict()[key], trained.state_dict()[key])


def test_report_lists_missing_unexpected_mismatched_and_task_specific(folders: dict) -> None:
    model = _bundle(folders, "bart-base", "vl-adapter", seed=0).model
    upstream = to_upstream_state_dict(model, "bart")
    upstream.pop("model.encoder.layers.0.fc1.weight")
    for task in TASKS:
        upstream.pop(f"model.encoder.layers.1.attn_adapter.adapters.{task}.up_sampler.bias")
    upstream["model.encoder.layers.0.fc2.bias"] = torch.zeros(5)
    upstream["model.encoder.layers.0.attn_adapter.adapters.gqa.down_sampler.weight"] = torch.randn_like(
        upstream["model.encoder.layers.0.attn_adapter.adapters.gqa.down_sampler.weight"])
    upstream["model.encoder.visual_embedding.obj_order_embedding.weight"] = upstream["model.shared.weight"]
    upstream["model.encoder.extra_head.weight"] = torch.ones(2)
    fresh = _bundle(folders, "bart-base", "vl-adapter", seed=1).model
    before = fresh.state_dict()["model.model.encoder.layers.0.fc2.bias"].clone()
    report = load_upstream_checkpoint(fresh, upstream, "bart")
    assert not report.ok
    assert report.missing == ["model.model.encoder.layers.0.fc1.weight"]
    assert report.missing_method == ["model.model.encoder.layers.1.fc2.petl.adapter.adapter.up.bias"
                                     .replace("fc2", "self_attn.out_proj")]
    assert report.unexpected == ["model.encoder.extra_head.weight"]
    assert report.ignored == ["model.encoder.visual_embedding.obj_order_embedding.weight"]
    assert report.mismatched == [("model.model.encoder.layers.0.fc2.bias", "model.encoder.layers.0.fc2.bias", (5,),
                                  (32,))]
    assert report.task_specific == ["model.model.encoder.layers.0.self_attn.out_proj.petl.adapter.adapter.down.weight"]
    assert torch.equal(fresh.state_dict()["model.model.encoder.layers.0.fc2.bias"], before)  # not loaded
    assert "shape mismatch" in report.table() and "task-specific" in report.table()
    with pytest.raises(UpstreamCheckpointError, match="does not fit the model strictly"):
        load_upstream_checkpoint(fresh, upstream, "bart", strict=True)


def test_errors_name_the_file(folders: dict, tmp_path: Path) -> None:
    model = _bundle(folders, "t5-base", "lora", seed=0).model
    with pytest.raises(UpstreamCheckpointError, match="no tensor maps to this model"):
        load_upstream_checkpoint(model, {"classifier.weight": torch.ones(2, 2)}, "t5")
    missing = r"LAST.pth: torch checkpoint file \(model.upstream_checkpoint\) not found"
    with pytest.raises(UpstreamCheckpointError, match=missing):
        load_upstream_checkpoint(model, tmp_path / "LAST.pth", "t5")
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UpstreamCheckpointError, match=r"bad.pth: cannot be read as a torch checkpoint"):
        load_upstream_checkpoint(model, tmp_path / "bad.pth", "t5")
    torch.save([torch.ones(1)], tmp_path / "list.pth")
    with pytest.raises(UpstreamCheckpointError, match="expected a dict of tensors"):
        load_upstream_checkpoint(model, tmp_path / "list.pth", "t5")
    bart_state = to_upstream_state_dict(_bundle(folders, "bart-base", "lora", seed=0).model, "bart")
    with pytest.raises(UpstreamCheckpointError, match="same backbone"):
        load_upstream_checkpoint(model, bart_state, "t5")
