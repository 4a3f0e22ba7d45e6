"""Compacter (PHM adapters): the PHM weight against an explicit Kronecker sum, the shared rule as one parameter,
upstream initialisations, parameter counts against hand formulas (BERT-base, VL-BART-base 2.70%), the shared
property suite (gradients, frozen base, save/load, remove), placements and config / host validation."""

from __future__ import annotations

import math
from typing import ClassVar

import peft_core.tuners.compacter  # noqa: F401  (registers the method and presets)
import pytest
import torch
from common import Case, PetlCommonTests, forward
from peft_core import (
    TargetError,
    adapter_parameters,
    adapter_records,
    add_adapter,
    count_parameters,
    iter_layers,
    load_adapter,
    make_config,
    mark_trainable,
    remove_adapters,
    save_adapter,
)
from peft_core.checkpoint import adapter_state_dict
from peft_core.testing import build_tiny
from peft_core.tuners.compacter import CompacterConfig, CompacterLayer, CompacterRuleLayer, PHMLinear, phm_weight
from peft_core.zoo import build_model

DT = torch.float64


def kron_sum(rule: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """sum_i kron(A_i, B_i), written with torch.kron (independent of phm_weight's einsum)."""
    return sum(torch.kron(rule[i], blocks[i]) for i in range(rule.shape[0]))


# ------------------------------------------------------------------------------------------------ PHM formula
@pytest.mark.parametrize("n,p,q", [(2, 3, 5), (4, 2, 2), (1, 4, 3), (3, 1, 6)])
def test_phm_weight_equals_explicit_kronecker_sum(n: int, p: int, q: int) -> None:
    g = torch.Generator().manual_seed(n * 100 + p * 10 + q)
    rule = torch.randn(n, n, n, generator=g, dtype=DT)
    blocks = torch.randn(n, p, q, generator=g, dtype=DT)
    torch.testing.assert_close(phm_weight(rule, blocks), kron_sum(rule, blocks), rtol=0, atol=1e-12)
    # the element formula H[a p + k, c q + l] = sum_i A_i[a, c] B_i[k, l]
    h = phm_weight(rule, blocks)
    a, k, c, col = n - 1, p - 1, 0, q - 1
    element = sum(rule[i, a, c] * blocks[i, k, col] for i in range(n))
    assert math.isclose(h[a * p + k, c * q + col].item(), element.item())


@pytest.mark.parametrize("factorized", [False, True])
def test_phm_linear_forward_is_x_times_kronecker_sum_plus_bias(factorized: bool) -> None:
    cfg = CompacterConfig(hypercomplex_division=4, factorized_phm=factorized, phm_rank=2, reduction_factor=2)
    layer = PHMLinear(8, 12, cfg).to(DT)
    with torch.no_grad():
        layer.b.normal_()
    x = torch.randn(3, 5, 8, dtype=DT)
    blocks = layer.W_left @ layer.W_right if factorized else layer.W
    expected = x @ kron_sum(layer.phm_rule, blocks) + layer.b
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)
    assert layer.weight().shape == (8, 12)


def test_phm_parameter_shapes_follow_upstream_layout() -> None:
    layer = PHMLinear(768, 96, CompacterConfig(hypercomplex_division=4, factorized_phm=True, phm_rank=3))
    shapes = {n: tuple(p.shape) for n, p in layer.named_parameters()}
    assert shapes == {"phm_rule": (4, 4, 4), "W_left": (4, 192, 3), "W_right": (4, 3, 24), "b": (96,)}
    full = PHMLinear(768, 96, CompacterConfig(hypercomplex_division=2, bias=False))
    assert {n: tuple(p.shape) for n, p in full.named_parameters()} == {"phm_rule": (2, 2, 2), "W": (2, 384, 48)}


def test_compacter_adapter_is_serial_residual_with_gelu_new() -> None:
    torch.manual_seed(0)
    cfg = CompacterConfig(hypercomplex_division=2, reduction_factor=4)
    layer = CompacterLayer(16, cfg).to(DT)
    out = torch.randn(2, 3, 16, dtype=DT)
    z = out @ layer.down.weight() + layer.down.b
    z = 0.5 * z * (1 + torch.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))
    expected = out + z @ layer.up.weight() + layer.up.b
    torch.testing.assert_close(layer.post(torch.nn.Identity(), (out,), {}, out), expected, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------------ init
def test_upstream_initialisations() -> None:
    torch.manual_seed(0)
    n = 8
    cfg = CompacterConfig(hypercomplex_division=n, reduction_factor=1, c_init="uniform", phm_init_range=0.3)
    layer = PHMLinear(64, 64, cfg)
    assert layer.phm_rule.abs().max() <= 0.01 and layer.phm_rule.abs().max() > 0.009   # per-layer: U(-0.01, 0.01)
    assert torch.count_nonzero(layer.b) == 0
    bound = math.sqrt(2) * math.sqrt(6 / (8 + 8))                                        # glorot-uniform, gain sqrt 2
    assert layer.W.abs().max() <= bound and layer.W.abs().max() > 0.95 * bound
    shared = CompacterRuleLayer(cfg)
    assert shared.phm_rule.abs().max() <= 1.0 and shared.phm_rule.abs().max() > 0.9    # shared: U(-1, 1)

    normal = CompacterConfig(hypercomplex_division=n, reduction_factor=1, w_init="normal", phm_init_range=0.05)
    layer = PHMLinear(256, 256, normal)
    assert abs(layer.W.std().item() - 0.05) < 0.005                                     # W ~ N(0, phm_init_range)
    assert abs(layer.phm_rule.std().item() - 0.01) < 0.002                              # per-layer rule N(0, 0.01)
    assert abs(CompacterRuleLayer(normal).phm_rule.std().item() - 0.05) < 0.01          # shared rule N(0, range)


# ------------------------------------------------------------------------------------------------ shared rule
def test_shared_rule_is_one_parameter() -> None:
    model, make_inputs = build_tiny("bert")
    add_adapter(model, make_config("compacter-paper", reduction_factor=4))
    params = adapter_parameters(model)
    rules = [n for n in params if n.endswith("phm_rule")]
    assert rules == ["petl.default.phm_rule"]
    holder = model.petl["default"]
    assert isinstance(holder, CompacterRuleLayer)
    phm = [m for _, _, layer in iter_layers(model) for m in layer.modules() if isinstance(m, PHMLinear)]
    assert len(phm) == 2 * 4  # down + up at 2 layers x (attention output, FFN output)
    assert all(m.rule is holder.phm_rule for m in phm)
    assert all("phm_rule" not in dict(m.named_parameters()) for m in phm)
    # counted once, saved once, trained once and seen by every layer after a step
    n = 4
    mark_trainable(model)
    assert count_parameters(model).trainable == sum(p.numel() for p in params.values())
    assert sum(p.numel() for n_, p in params.items() if n_.endswith("phm_rule")) == n**3
    assert [k for k in adapter_state_dict(model) if k.endswith("phm_rule")] == ["petl.phm_rule"]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    before = holder.phm_rule.detach().clone()
    forward(model, make_inputs(0)).pow(2).mean().backward()
    assert holder.phm_rule.grad is not None and holder.phm_rule.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(before, holder.phm_rule)
    assert all(torch.equal(m.rule, holder.phm_rule) for m in phm)


def test_shared_rule_save_load_and_remove(tmp_path) -> None:
    model, make_inputs = build_tiny("bart")
    base = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = make_inputs(0)
    base_out = forward(model, inputs).detach()
    add_adapter(model, make_config("compacter-paper", reduction_factor=4, phm_init_range=0.5))
    with torch.no_grad():
        for p in adapter_parameters(model).values():
            p.add_(torch.randn_like(p) * 0.1)
    expected = forward(model, inputs).detach()
    save_adapter(model, tmp_path)
    fresh, _ = build_tiny("bart")
    load_adapter(fresh, tmp_path)
    torch.testing.assert_close(forward(fresh, inputs), expected, rtol=0, atol=0)
    torch.testing.assert_close(fresh.petl["default"].phm_rule, model.petl["default"].phm_rule, rtol=0, atol=0)
    phm = [m for _, _, layer in iter_layers(fresh) for m in layer.modules() if isinstance(m, PHMLinear)]
    assert all(m.rule is fresh.petl["default"].phm_rule for m in phm)
    remove_adapters(model)
    assert not hasattr(model, "petl")
    assert list(model.state_dict()) == list(base) and all(torch.equal(model.state_dict()[k], base[k]) for k in base)
    torch.testing.assert_close(forward(model, inputs), base_out, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ counts
def _compacter_params(d: int, h: int, n: int, k: int, factorized: bool, shared: bool) -> int:
    """One Compacter adapter (down d->h, up h->d, biases) by hand."""
    def phm(i: int, o: int) -> int:
        b = n * (i // n) * k + n * k * (o // n) if factorized else n * (i // n) * (o // n)
        return b + o + (0 if shared else n**3)
    return phm(d, h) + phm(h, d)


@pytest.mark.parametrize("preset,n,h,k,factorized,shared,hosts", [
    ("compacter", 2, 96, 1, False, False, 24),
    ("compacter-paper", 4, 24, 1, True, True, 24),
    ("compacter++", 4, 24, 1, True, True, 12),
])
def test_bert_base_count_equals_hand_formula(preset, n, h, k, factorized, shared, hosts) -> None:
    model = build_model("bert-base")  # meta device: exact shapes, no memory
    base = count_parameters(model).total
    add_adapter(model, make_config(preset))
    mark_trainable(model)
    report = count_parameters(model)
    expected = hosts * _compacter_params(768, h, n, k, factorized, shared) + (n**3 if shared else 0)
    assert report.trainable == expected
    assert report.total == base + expected and report.base_total == base
    assert len(adapter_records(model)["default"].hosts) == hosts + (1 if shared else 0)


def test_vl_bart_base_compacter_percent_next_to_vlpet() -> None:
    """VL-Adapter's Compacter on VL-BART-base: n=2, r=8 (h=96), no sharing, no factorisation, adapters after
    self-attention and FFN of the 6 encoder layers and self-attention, cross-attention and FFN of the 6 decoder
    layers (30), all LayerNorms and the visual embedding trainable. vlpet.md Table 2: 2.70%."""
    from peft_core.zoo_vl import build_vl_model

    model = build_vl_model("bart-base")
    base = count_parameters(model)
    add_adapter(model, make_config("compacter", modules_to_save=["visual_embedding"]))
    mark_trainable(model, extra=["self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm",
                                 "layernorm_embedding"])
    report = count_parameters(model)
    adapters = 30 * _compacter_params(768, 96, 2, 1, False, False)
    layer_norms = (2 * 6 + 1 + 3 * 6 + 1) * 2 * 768
    visual = 2048 * 768 + 768 + 2 * 768 + 5 * 768 + 768 + 2 * 768 + 2 * 768
    assert report.trainable == adapters + layer_norms + visual
    assert report.total == base.total + adapters
    print(f"\nCompacter VL-BART-base: trainable {report.trainable:,} / total {report.total:,} = "
          f"{report.percent:.2f}% (vlpet.md: 2.70%); of the base model {report.percent_of_base:.2f}%")
    assert abs(report.percent - 2.70) < 0.01


# ------------------------------------------------------------------------------------------------ placement
def test_vl_adapter_placement_on_bart_and_t5() -> None:
    model, _ = build_tiny("bart")
    add_adapter(model, make_config("compacter"))
    hosts = adapter_records(model)["default"].hosts
    assert len(hosts) == 2 * 2 + 2 * 3
    assert {h.split(".")[-1] for h in hosts} == {"out_proj", "fc2"}
    assert sum("encoder_attn" in h for h in hosts) == 2
    model, _ = build_tiny("t5")
    add_adapter(model, make_config("compacter++", reduction_factor=4))
    hosts = adapter_records(model)["default"].hosts
    assert hosts[0] == "" and all(h.endswith("DenseReluDense.wo") for h in hosts[1:]) and len(hosts) == 5


# ------------------------------------------------------------------------------------------------ shared suite
class TestCompacterCommon(PetlCommonTests):
    CASES: ClassVar[list[Case]] = [
        Case("bert", "compacter", identity=False),
        Case("bart", "compacter-paper", (("reduction_factor", 4), ("phm_init_range", 0.05)), identity=False),
        Case("t5", "compacter++", (("reduction_factor", 4), ("phm_init_range", 0.05)), identity=False),
        Case("timm_vit", "compacter", (("factorized_phm", True), ("phm_rank", 2)), identity=False),
    ]


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("kwargs,field", [
    ({"hypercomplex_division": 0}, "hypercomplex_division"),
    ({"phm_rank": 0}, "phm_rank"),
    ({"w_init": "phm"}, "w_init"),            # upstream's default 'phm' raises inside init_W
    ({"c_init": "random"}, "c_init"),         # upstream's default 'random' fails its own assert
    ({"placement": "parallel"}, "placement"),
    ({"bottleneck_dim": 16}, "bottleneck_dim"),
    ({"reduction_factor": 0}, "reduction_factor"),
    ({"phm_init_range": 0.0}, "phm_init_range"),
    ({"activation": "swishy"}, "activation"),
    ({"shared_phm_rule": 1}, "shared_phm_rule"),
    ({"placement": "custom"}, "placement"),
])
def test_config_rejects_bad_values(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        CompacterConfig(**kwargs)


def test_indivisible_host_raises_and_leaves_model_untouched() -> None:
    model, _ = build_tiny("bert")  # width 32
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TargetError, match="hypercomplex_division=3"):
        add_adapter(model, make_config("compacter", hypercomplex_division=3))
    with pytest.raises(TargetError, match="bottleneck size 1"):
        add_adapter(model, make_config("compacter-paper"))  # 32 // 32 = 1, not divisible by 4
    assert not adapter_records(model) and not hasattr(model.encoder.layer[0].output.dense, "petl")
    assert list(model.state_dict()) == list(before)


def test_phm_linear_rejects_indivisible_sizes() -> None:
    with pytest.raises(ValueError, match="hypercomplex_division=4"):
        PHMLinear(10, 8, CompacterConfig(hypercomplex_division=4))
