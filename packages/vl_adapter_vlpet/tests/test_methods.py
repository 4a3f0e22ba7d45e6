"""Every method on tiny VL-BART / VL-T5: forward, generation, which parameters train, identity at initialisation,
and the method table against the upstream scripts and shared/baselines/vl_pet.toml."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft_core import adapter_records, disable_adapters, make_config
from peft_core.runtime.config import ConfigError
from peft_core.tuners.bitfit.layer import BiasDeltaLayer, NormDeltaLayer
from vl_adapter_vlpet.methods import METHODS, NOT_AVAILABLE, apply_method, method_names, split_overrides
from vl_adapter_vlpet.models import MethodConfig, build_model, build_vl_seq2seq, model_inputs
from vl_adapter_vlpet.testing import TINY_METHOD_OVERRIDES, tiny_batch, tiny_model_config, tiny_tokenizer

CASES = [(b, m) for b in ("bart-base", "t5-base") for m in method_names(b)]
BASELINES = Path(__file__).resolve().parents[3] / "shared" / "baselines"


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, object]]:
    out = {}
    for backbone in ("bart-base", "t5-base"):
        folder = tmp_path_factory.mktemp(backbone)
        out[backbone] = (str(folder), tiny_tokenizer(backbone, folder))
    return out


def _bundle(tokenizers: dict, backbone: str, method: str, seed: int = 0, **method_kw: object):
    torch.manual_seed(seed)
    folder, _ = tokenizers[backbone]
    cfg = tiny_model_config(backbone, tokenizer=folder, feat_dim=16, n_vis_tokens=4)
    overrides = {**TINY_METHOD_OVERRIDES.get(method, {}), **method_kw.pop("overrides", {})}
    return build_model(cfg, MethodConfig(preset=method, overrides=overrides, **method_kw), dropout=0.0)


@pytest.mark.parametrize("backbone,method", CASES)
def test_forward_backward_generate_and_grads_only_on_trainable(tokenizers: dict, backbone: str, method: str) -> None:
    bundle = _bundle(tokenizers, backbone, method)
    model = bundle.model.train()
    batch = tiny_batch(tokenizers[backbone][1])
    loss = model(**model_inputs(batch)).loss
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert with_grad == trainable and trainable
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n.startswith("visual_embedding.feat"))
    model.eval()
    out = model.generate(**model_inputs(batch, labels=False), **{**bundle.generation_kwargs, "num_beams": 2,
                                                                  "max_length": 5})
    assert out.shape[0] == 2 and 2 <= out.shape[1] <= 5
    start = model.config.decoder_start_token_id
    assert out[:, 0].tolist() == [start, start]
    assert 0 < bundle.params.trainable <= bundle.params.total
    assert (bundle.params.trainable == bundle.params.total) == (method == "full-finetune")


@pytest.mark.parametrize("backbone,method", [("bart-base", "vl-pet-large"), ("t5-base", "lora"),
                                             ("bart-base", "bitfit"), ("bart-base", "full-finetune")])
def test_visual_embedding_trains_unless_frozen(tokenizers: dict, backbone: str, method: str) -> None:
    folder, _ = tokenizers[backbone]
    for frozen in (False, True):
        cfg = tiny_model_config(backbone, tokenizer=folder, feat_dim=16, n_vis_tokens=4, freeze_vis_emb=frozen)
        model = build_model(cfg, MethodConfig(preset=method, overrides=TINY_METHOD_OVERRIDES.get(method, {}))).model
        vis = [p.requires_grad for n, p in model.named_parameters() if n.startswith("visual_embedding.")]
        assert vis and all(flag is not frozen for flag in vis)
        assert any(p.requires_grad for n, p in model.named_parameters() if not n.startswith("visual_embedding."))


@pytest.mark.parametrize("backbone,method,overrides", [
    ("bart-base", "lora", {}), ("t5-base", "lora", {}), ("bart-base", "bitfit", {}), ("t5-base", "bitfit", {}),
    # T5 VL-PET scripts zero-init the adapter up, the gate and the VPA up: with middleY (G = 1 + z, z = 0) and no
    # gate scaling the model is exactly the base model at init
    ("t5-base", "vl-pet-middley", {"scaling": 1.0}),
])
def test_identity_at_init(tokenizers: dict, backbone: str, method: str, overrides: dict) -> None:
    bundle = _bundle(tokenizers, backbone, method, overrides=overrides)
    model = bundle.model.eval()
    inputs = model_inputs(tiny_batch(tokenizers[backbone][1]))
    with torch.no_grad():
        out = model(**inputs).logits
        with disable_adapters(model):
            base = model(**inputs).logits
    torch.testing.assert_close(out, base, rtol=0, atol=0)


def test_t5_vlpet_presets_are_not_identity(tokenizers: dict) -> None:
    """The T5 scripts start from G = 0.5 (large) scaled by s = 0.3: the frozen sublayer outputs are damped."""
    model = _bundle(tokenizers, "t5-base", "vl-pet-large").model.eval()
    inputs = model_inputs(tiny_batch(tokenizers["t5-base"][1]))
    with torch.no_grad():
        out = model(**inputs).logits
        with disable_adapters(model):
            base = model(**inputs).logits
    assert not torch.allclose(out, base, atol=1e-4)


def _trainable(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_trainable_sets_follow_the_scripts(tokenizers: dict) -> None:
    # VL-Adapter (BART): every LayerNorm of encoder and decoder trains in place (--unfreeze_layer_norms)
    model = _bundle(tokenizers, "bart-base", "vl-adapter").model
    names = _trainable(model)
    assert {"model.model.encoder.layers.0.self_attn_layer_norm.weight", "model.model.decoder.layernorm_embedding.bias",
            "model.model.decoder.layers.1.encoder_attn_layer_norm.weight"} <= names
    assert "model.model.encoder.layers.0.fc1.weight" not in names
    # VL-PET: encoder norms as deltas, decoder norms frozen
    model = _bundle(tokenizers, "bart-base", "vl-pet-large").model
    names = _trainable(model)
    assert "model.model.encoder.layers.0.final_layer_norm.petl.vlpet.gain" in names
    assert not any(".decoder." in n and "norm" in n for n in names)
    # LoRA (BART): LoRA matrices and every bias (targets = ["lora", "bias"]); T5 has no bias to train
    model = _bundle(tokenizers, "bart-base", "lora").model
    assert set(adapter_records(model)) == {"lora", "bias"}
    assert "model.model.decoder.layers.0.fc1.petl.bias.bias" in _trainable(model)
    model = _bundle(tokenizers, "t5-base", "lora").model
    assert set(adapter_records(model)) == {"lora"}
    # BitFit (T5, LST --use_bitfit): a new bias on every Linear, lm_head included, none in the visual embedding
    model = _bundle(tokenizers, "t5-base", "bitfit").model
    layers = [layer for host in ("model.lm_head", "model.encoder.block.0.layer.1.DenseReluDense.wi")
              for layer in model.get_submodule(host).petl.values()]
    assert all(isinstance(layer, BiasDeltaLayer) for layer in layers) and len(layers) == 2
    assert not any("visual_embedding" in h for h in adapter_records(model)["bias"].hosts)


def test_layer_norm_switch(tokenizers: dict) -> None:
    """``method.layer_norms=false`` reproduces upstream VL-T5, whose --unfreeze_layer_norms trained no T5 norm."""
    on = _trainable(_bundle(tokenizers, "t5-base", "vl-adapter").model)
    off = _trainable(_bundle(tokenizers, "t5-base", "vl-adapter", layer_norms=False).model)
    norms = {n for n in on if "layer_norm" in n}
    assert len(norms) == 2 * 2 + 2 * 3 + 2 and not any("layer_norm" in n for n in off)
    assert on - norms == off
    model = _bundle(tokenizers, "bart-base", "vl-pet-small", layer_norms=False).model
    assert not any(isinstance(layer, NormDeltaLayer) for layer in
                   (lay for _, m in model.named_modules() if hasattr(m, "petl") for lay in m.petl.values()))


def test_overrides_reach_the_named_adapter(tokenizers: dict) -> None:
    bundle = _bundle(tokenizers, "bart-base", "lora", overrides={"r": 2, "bias.rule": "custom"})
    assert adapter_records(bundle.model)["lora"].config.r == 2
    assert split_overrides({"r": 2, "bias.rule": "custom"}, ["lora", "bias"]) == {"lora": {"r": 2},
                                                                                    "bias": {"rule": "custom"}}
    with pytest.raises(ValueError, match="names adapter 'gate'"):
        split_overrides({"gate.r": 1}, ["lora", "bias"])


def test_bad_method_requests(tokenizers: dict) -> None:
    with pytest.raises(ConfigError, match=r"hyperformer.*not available.*hypernetwork"):
        MethodConfig(preset="hyperformer")
    with pytest.raises(ConfigError, match=r"method\.preset='nope' is not allowed"):
        MethodConfig(preset="nope")
    with pytest.raises(ValueError, match="not available for backbone 'bart-base'"):
        _bundle(tokenizers, "bart-base", "lst")
    model = build_vl_seq2seq(tiny_model_config("bart-base", feat_dim=8))
    with pytest.raises(ValueError, match="not allowed for full fine-tuning"):
        apply_method(model, "full-finetune", "bart-base", {"r": 4})
    with pytest.raises(ValueError, match="expects a VL model"):
        apply_method(torch.nn.Linear(2, 2), "lora", "bart-base")


def test_method_table_matches_presets_scripts_and_baselines() -> None:
    from peft_core.baselines import load_baselines

    rows = {(r.backbone, r.method): r for r in load_baselines("vl_pet", root=BASELINES) if r.dataset in ("*",
                                                                                                        "average")}
    for name, spec in METHODS.items():
        for backbone, recipe in spec.recipes.items():
            for comp in recipe.components:
                targets = {"target_modules": "model.lm_head"} if comp.targets else {}
                make_config(comp.preset, **{**comp.options, **targets})
            row = rows.get((backbone, spec.baseline_name))
            if recipe.percent is None:
                assert row is None, (name, backbone)
                continue
            published = row.metrics.get("params_percent", row.trainable_percent)
            assert published == recipe.percent, (name, backbone)
    assert ("bart-base", "hyperformer") in rows and "hyperformer" in NOT_AVAILABLE
    lora = METHODS["lora"].recipes
    assert "--lora_dim 128" in lora["bart-base"].flags and lora["t5-base"].components[0].options["r"] == 150
    assert METHODS["vl-adapter"].recipes["t5-base"].components[0].options["reduction_factor"] == 4
    assert "--adapter_down_dim 192" in METHODS["vl-pet-large"].recipes["t5-base"].flags
    assert not METHODS["full-finetune"].recipes["bart-base"].task_prompts
    assert METHODS["lst"].recipes["t5-base"].generation_cache is False
