"""pi-Tuning step 3: expert interpolation (bottleneck adapter, LoRA) and collapse to one ordinary checkpoint.

The reference below follows exact_formulas.md ``pituning_adapter_interpolation`` with explicit loops over experts.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from common import assert_state_equal, perturb
from peft_core import (
    CheckpointError,
    adapter_records,
    adapter_state_dict,
    add_adapter,
    count_parameters,
    iter_layers,
    load_adapter,
    make_config,
    mark_trainable,
    merge_adapter,
    remove_adapters,
    save_adapter,
    unmerge_adapter,
)
from peft_core.attention import site_of
from peft_core.checkpoint import read_adapter_config
from peft_core.testing import build_tiny, output_tensor
from peft_core.tuners.pituning.interpolation import (
    InterpolatedBottleneckLayer,
    PiInterpolationConfig,
    collapse_interpolation,
    interpolate_experts,
    interpolation_weights,
)
from torch.nn import functional as F

BERT_LORA = {"target_modules": ["query", "value", "attention.output.dense"], "init": "random"}
# OFA's prompt encoder with projection: one MLP per stack (share_mlp), ReLU, proj 2d, dropout 0.2 (eval: off)
SHARED_MLP_PREFIX = {"num_virtual_tokens": 4, "reparameterization": "mlp", "share_mlp": True, "activation": "relu",
                     "proj_factor": 2.0, "dropout": 0.2}
# Uni-Perceiver deep prompts: hidden-space tokens through the frozen key/value projections
HIDDEN_PROMPT = {"num_virtual_tokens": 3, "space": "hidden", "attentions": ["encoder_self"]}


def run(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    return output_tensor(model(**inputs))


def make_experts(tmp_path: Path, model_name: str, preset: str, n: int = 3, **kw: object) -> list[Path]:
    """N experts of one config on the same base model, each with its own random parameters, saved with
    save_adapter."""
    paths = []
    for i in range(n):
        model, _ = build_tiny(model_name)
        add_adapter(model, make_config(preset, **kw))
        perturb(model, seed=100 + i, std=0.1)
        paths.append(save_adapter(model, tmp_path / f"{model_name}-{preset}-{i}"))
    return paths


def randomise_logits(model: torch.nn.Module, name: str = "pi", seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, _, layer in iter_layers(model, name):
            layer.logits.copy_(torch.randn(layer.logits.shape, generator=g))


# ------------------------------------------------------------------------------------------------ formulas
def test_pi_adapter_preset_places_adapters_after_self_attention_and_ffn() -> None:
    cfg = make_config("pi-adapter")
    assert (cfg.bottleneck_dim, cfg.activation, cfg.init, cfg.scale, cfg.resolved_mode) == (128, "relu", "bert", 1.0,
                                                                                           "serial")
    model, _ = build_tiny("bart")
    hosts = add_adapter(model, cfg).hosts
    assert hosts and all(h.endswith(("self_attn.out_proj", "fc2")) for h in hosts)
    assert not any("encoder_attn" in h for h in hosts)
    assert sum(h.endswith("fc2") for h in hosts) == 4  # 2 encoder + 2 decoder layers


def test_bottleneck_interpolation_follows_upstream_formula(tmp_path: Path) -> None:
    paths = make_experts(tmp_path, "bert", "pi-adapter", n=3, bottleneck_dim=8)
    model, make_inputs = build_tiny("bert")
    interpolate_experts(model, paths)
    randomise_logits(model)
    _, host, layer = next(iter(iter_layers(model, "pi")))
    assert isinstance(layer, InterpolatedBottleneckLayer)
    z = torch.randn(2, 5, 32)
    p = F.softmax(layer.logits.detach(), dim=-1)
    ads = [e.adapter for e in layer.experts]
    down = sum(p[i] * (z @ ads[i].down.weight.T + ads[i].down.bias) for i in range(3))
    h = torch.relu(down)  # ReLU AFTER mixing
    up = sum(p[i] * ads[0].scale * (h @ ads[i].up.weight.T + ads[i].up.bias) for i in range(3))  # every up on h
    torch.testing.assert_close(layer.adapter(z), up, rtol=1e-5, atol=1e-7)
    # serial with residual at the host: out' = out + f(out), out = the host Linear's own output
    captured = {}
    host.register_forward_pre_hook(lambda m, a: captured.__setitem__("x", a[0]))
    host.register_forward_hook(lambda m, a, o: captured.__setitem__("out", o))
    run(model, make_inputs(0))
    out = F.linear(captured["x"], host.weight, host.bias)
    torch.testing.assert_close(captured["out"], out + layer.adapter(out), rtol=0, atol=0)


def test_uniform_init_and_given_init(tmp_path: Path) -> None:
    paths = make_experts(tmp_path, "bert", "pi-adapter", n=2, bottleneck_dim=4)
    model, _ = build_tiny("bert")
    interpolate_experts(model, paths)
    for w in interpolation_weights(model).values():
        torch.testing.assert_close(w, torch.full((2,), 0.5))
    model, _ = build_tiny("bert")
    interpolate_experts(model, paths, init_logits=torch.tensor([0.0, 1.0]))
    for w in interpolation_weights(model).values():
        torch.testing.assert_close(w, F.softmax(torch.tensor([0.0, 1.0]), 0))


@pytest.mark.parametrize(("preset", "kw"), [("pi-adapter", {"bottleneck_dim": 8}), ("lora", BERT_LORA),
                                           ("prefix", {"num_virtual_tokens": 3})])
def test_one_hot_weights_equal_that_expert(tmp_path: Path, preset: str, kw: dict) -> None:
    paths = make_experts(tmp_path, "bert", preset, n=3, **kw)
    _, make_inputs = build_tiny("bert")
    inputs = make_inputs(0)
    for i in range(3):
        single, _ = build_tiny("bert")
        load_adapter(single, paths[i])
        expected = run(single, inputs).detach()
        model, _ = build_tiny("bert")
        logits = [-1e4] * 3
        logits[i] = 0.0
        interpolate_experts(model, paths, init_logits=logits)
        torch.testing.assert_close(run(model, inputs), expected, rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------------------------------------- collapse
COLLAPSE_CASES = [
    ("bert", "pi-adapter", {"bottleneck_dim": 8}),
    ("bert", "pi-adapter", {"bottleneck_dim": 8, "learnable_scale": True, "scale": 0.5}),
    ("bert", "lora", BERT_LORA),
    ("timm_vit", "lora", {"fused_slices": "qv", "init": "random"}),
    ("torch_transformer", "lora", {"init": "random"}),
    ("toy_conv", "lora", {"target_modules": ["conv0", "conv1"], "init": "random"}),
    ("bart", "prefix", SHARED_MLP_PREFIX),
    ("torch_transformer", "prefix", {"num_virtual_tokens": 3}),
    ("bert", "prefix", HIDDEN_PROMPT),
]


@pytest.mark.parametrize(("model_name", "preset", "kw"), COLLAPSE_CASES,
                         ids=[f"{m}-{p}-{i}" for i, (m, p, _) in enumerate(COLLAPSE_CASES)])
def test_collapsed_checkpoint_reproduces_interpolation(tmp_path: Path, model_name: str, preset: str,
                                                       kw: dict) -> None:
    paths = make_experts(tmp_path, model_name, preset, n=3, **kw)
    model, make_inputs = build_tiny(model_name)
    interpolate_experts(model, paths)
    randomise_logits(model, seed=1)
    inputs = make_inputs(2)
    expected = run(model, inputs).detach()
    out = collapse_interpolation(model, "pi", tmp_path / "collapsed")
    fresh, _ = build_tiny(model_name)
    config = load_adapter(fresh, out)
    assert config.method == make_config(preset).method
    torch.testing.assert_close(run(fresh, inputs), expected, rtol=1e-5, atol=1e-6)
    if config.method == "lora":
        single = read_adapter_config(paths[0])
        assert (config.r, config.alpha) == (3 * single.r, 3 * single.alpha)
    if config.method == "prefix" and config.space == "kv":
        assert (config.reparameterization, config.share_mlp) == ("none", False)


def test_prefix_interpolation_mixes_expert_keys_and_values(tmp_path: Path) -> None:
    paths = make_experts(tmp_path, "bart", "prefix", n=2, **SHARED_MLP_PREFIX)
    model, _ = build_tiny("bart")
    interpolate_experts(model, paths, init_logits=[0.4, -0.1])
    _, host, layer = next(iter(iter_layers(model, "pi")))
    site = site_of(host)
    p = F.softmax(torch.tensor([0.4, -0.1]), 0)
    key, value = layer.extra_kv(site, 2)
    expected = [e.extra_kv(site, 2) for e in layer.experts]
    torch.testing.assert_close(key, p[0] * expected[0][0] + p[1] * expected[1][0])
    torch.testing.assert_close(value, p[0] * expected[0][1] + p[1] * expected[1][1])
    # the N experts do not share their stack MLPs
    mlps = [e.shared_mlp for e in layer.experts]
    assert mlps[0] is not mlps[1] and not torch.equal(mlps[0].proj_out.weight, mlps[1].proj_out.weight)


def test_prefix_collapse_with_hidden_norm_is_refused(tmp_path: Path) -> None:
    paths = make_experts(tmp_path, "torch_transformer", "prefix", n=2, **HIDDEN_PROMPT, hidden_norm="norm1")
    model, _ = build_tiny("torch_transformer")
    interpolate_experts(model, paths)
    with pytest.raises(ValueError, match="hidden_norm"):
        collapse_interpolation(model, "pi", tmp_path / "out")
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_naive_lora_mixing_of_a_and_b_is_not_the_interpolation(tmp_path: Path) -> None:
    paths = make_experts(tmp_path, "bert", "lora", n=2, **BERT_LORA)
    model, _ = build_tiny("bert")
    interpolate_experts(model, paths, init_logits=[0.3, -0.4])
    _, _, layer = next(iter(iter_layers(model, "pi")))
    p = layer.weights().detach()
    a = [e.lora.lora_A.detach() for e in layer.experts]
    b = [e.lora.lora_B.detach() for e in layer.experts]
    scaling = layer.experts[0].lora.scaling
    naive = (p[0] * b[0] + p[1] * b[1]) @ (p[0] * a[0] + p[1] * a[1]) * scaling
    exact = layer.delta_weight().detach()
    torch.testing.assert_close(exact, scaling * (p[0] * b[0] @ a[0] + p[1] * b[1] @ a[1]))
    assert (naive - exact).abs().max() > 1e-4


def test_collapse_requires_an_interpolation_adapter(tmp_path: Path) -> None:
    model, _ = build_tiny("toy_mlp")
    add_adapter(model, make_config("lora", target_modules=["lin0"]))
    with pytest.raises(ValueError, match="pi_interpolation"):
        collapse_interpolation(model, "default", tmp_path)
    with pytest.raises(ValueError, match="not on this model"):
        collapse_interpolation(model, "pi", tmp_path)


# ------------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("train_experts", [False, True])
def test_gradients_only_on_logits_unless_experts_train(tmp_path: Path, train_experts: bool) -> None:
    paths = make_experts(tmp_path, "bert", "pi-adapter", n=2, bottleneck_dim=8)
    model, make_inputs = build_tiny("bert")
    base = {k: v.clone() for k, v in model.state_dict().items()}
    interpolate_experts(model, paths, train_experts=train_experts)
    mark_trainable(model)  # switches every adapter parameter on; frozen experts must still get no gradient
    layers = [layer for _, _, layer in iter_layers(model, "pi")]
    experts_before = [p.detach().clone() for layer in layers for p in layer.experts.parameters()]
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(2):
        opt.zero_grad()
        run(model, make_inputs(step)).pow(2).mean().backward()
        if step == 0:
            for layer in layers:
                assert layer.logits.grad is not None and layer.logits.grad.abs().sum() > 0
                for p in layer.experts.parameters():
                    assert (p.grad is not None and p.grad.abs().sum() > 0) if train_experts else p.grad is None
            for name, p in model.named_parameters():
                if ".petl." not in name:
                    assert p.grad is None, f"base parameter {name} got a gradient"
        opt.step()
    experts_after = [p.detach() for layer in layers for p in layer.experts.parameters()]
    same = all(torch.equal(a, b) for a, b in zip(experts_before, experts_after))
    assert same != train_experts
    assert not all(torch.allclose(w, torch.full((2,), 0.5)) for w in interpolation_weights(model).values())
    assert_state_equal(base, remove_adapters(model).state_dict())


@pytest.mark.parametrize("train_experts", [False, True])
def test_prefix_interpolation_gradients(tmp_path: Path, train_experts: bool) -> None:
    paths = make_experts(tmp_path, "torch_transformer", "prefix", n=2, num_virtual_tokens=3)
    model, make_inputs = build_tiny("torch_transformer")
    for p in model.parameters():
        p.requires_grad_(False)
    interpolate_experts(model, paths, train_experts=train_experts)
    mark_trainable(model)
    run(model, make_inputs(0)).pow(2).mean().backward()
    for _, _, layer in iter_layers(model, "pi"):
        assert layer.logits.grad is not None and layer.logits.grad.abs().sum() > 0
        for p in layer.experts.parameters():
            assert (p.grad is not None) == train_experts
    assert all(p.grad is None for n, p in model.named_parameters() if ".petl." not in n)


def test_frozen_experts_are_not_trainable_after_interpolate(tmp_path: Path) -> None:
    paths = make_experts(tmp_path, "toy_mlp", "lora", n=2, target_modules=["lin0", "lin1"], init="random")
    model, _ = build_tiny("toy_mlp")
    interpolate_experts(model, paths)
    mark_trainable(model)  # must keep frozen experts frozen (MethodLayer.frozen_parameter_names)
    for _, _, layer in iter_layers(model, "pi"):
        assert layer.logits.requires_grad
        assert not any(p.requires_grad for p in layer.experts.parameters())
    assert count_parameters(model).trainable == sum(layer.logits.numel() for _, _, layer in iter_layers(model, "pi"))


# -------------------------------------------------------------------------------------------- checkpoints
def test_save_load_and_remove_of_the_interpolation(tmp_path: Path) -> None:
    paths = make_experts(tmp_path, "bert", "pi-adapter", n=3, bottleneck_dim=8)
    model, make_inputs = build_tiny("bert")
    inputs = make_inputs(1)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    base_out = run(model, inputs).detach()
    interpolate_experts(model, paths)
    randomise_logits(model, seed=3)
    expected = run(model, inputs).detach()
    save_adapter(model, tmp_path / "pi", "pi")
    fresh, _ = build_tiny("bert")
    config = load_adapter(fresh, tmp_path / "pi", "pi")
    assert isinstance(config, PiInterpolationConfig) and config.num_experts == 3
    torch.testing.assert_close(run(fresh, inputs), expected, rtol=0, atol=0)
    remove_adapters(model)
    assert_state_equal(base_state, model.state_dict())
    torch.testing.assert_close(run(model, inputs), base_out, rtol=0, atol=0)


def test_state_dict_experts(tmp_path: Path) -> None:
    paths = make_experts(tmp_path, "toy_mlp", "lora", n=2, target_modules=["lin0", "lin1"], init="random")
    _, make_inputs = build_tiny("toy_mlp")
    inputs = make_inputs(0)
    from_paths, _ = build_tiny("toy_mlp")
    interpolate_experts(from_paths, paths, init_logits=[0.2, 0.7])
    states = []
    for path in paths:
        m, _ = build_tiny("toy_mlp")
        load_adapter(m, path)
        states.append(adapter_state_dict(m))
    from_states, _ = build_tiny("toy_mlp")
    interpolate_experts(from_states, states, init_logits=[0.2, 0.7], config=read_adapter_config(paths[0]))
    torch.testing.assert_close(run(from_states, inputs), run(from_paths, inputs), rtol=0, atol=0)
    mixed, _ = build_tiny("toy_mlp")
    interpolate_experts(mixed, [paths[0], states[1]], init_logits=[0.2, 0.7])  # config read from the folder
    torch.testing.assert_close(run(mixed, inputs), run(from_paths, inputs), rtol=0, atol=0)
    with pytest.raises(ValueError, match="config=None"):
        interpolate_experts(build_tiny("toy_mlp")[0], states)


def test_lora_interpolation_merges(tmp_path: Path) -> None:
    paths = make_experts(tmp_path, "torch_transformer", "lora", n=2, init="random")
    model, make_inputs = build_tiny("torch_transformer")
    interpolate_experts(model, paths, init_logits=[0.1, -0.5])
    inputs = make_inputs(0)
    unmerged = run(model, inputs).detach()
    merge_adapter(model, "pi")
    torch.testing.assert_close(run(model, inputs), unmerged, rtol=1e-4, atol=1e-5)
    unmerge_adapter(model, "pi")
    torch.testing.assert_close(run(model, inputs), unmerged, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------- bad inputs
def test_mismatched_expert_configs_name_the_field(tmp_path: Path) -> None:
    a = make_experts(tmp_path / "a", "bert", "pi-adapter", n=1, bottleneck_dim=8)
    b = make_experts(tmp_path / "b", "bert", "pi-adapter", n=1, bottleneck_dim=4)
    c = make_experts(tmp_path / "c", "bert", "lora", n=1, **BERT_LORA)
    model, _ = build_tiny("bert")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="bottleneck_dim"):
        interpolate_experts(model, [a[0], b[0]])
    with pytest.raises(ValueError, match="method"):
        interpolate_experts(model, [a[0], c[0]])
    with pytest.raises(ValueError, match="at least 2"):
        interpolate_experts(model, [a[0]])
    with pytest.raises(FileNotFoundError, match="expert 1"):
        interpolate_experts(model, [a[0], tmp_path / "missing"])
    assert not adapter_records(model)
    assert_state_equal(state, model.state_dict())


def test_wrong_expert_weights_leave_the_model_untouched(tmp_path: Path) -> None:
    paths = make_experts(tmp_path, "bert", "pi-adapter", n=2, bottleneck_dim=8)
    model, _ = build_tiny("bert")
    bad = dict(adapter_state_dict(load_adapter_into(build_tiny("bert")[0], paths[1])))
    key = next(iter(bad))
    bad[key] = bad[key][..., :2]
    with pytest.raises(CheckpointError, match="shape mismatch"):
        interpolate_experts(model, [paths[0], bad])
    bad.pop(key)
    with pytest.raises(CheckpointError, match="missing"):
        interpolate_experts(model, [paths[0], bad])
    assert not adapter_records(model) and not list(iter_layers(model))


def load_adapter_into(model: torch.nn.Module, path: Path) -> torch.nn.Module:
    load_adapter(model, path)
    return model


@pytest.mark.parametrize(("kw", "match"), [
    ({"num_experts": 1}, "num_experts"),
    ({"init_logits": [0.0, 1.0, 2.0]}, "init_logits"),
    ({"init_logits": [0.0, float("nan")]}, "init_logits"),
    ({"expert_config": {"method": "bitfit"}}, "expert_config"),
    ({"expert_config": make_config("pi-adapter", layer_norm="in").to_dict()}, "layer_norm"),
    ({"expert_config": make_config("pi-adapter", modules_to_save=["pooler"]).to_dict()}, "modules_to_save"),
    ({"target_modules": ["query"]}, "target_modules"),
])
def test_config_rejects_bad_values(kw: dict, match: str) -> None:
    base = {"expert_config": make_config("pi-adapter").to_dict(), "num_experts": 2}
    with pytest.raises(ValueError, match=match):
        PiInterpolationConfig(**{**base, **kw})
