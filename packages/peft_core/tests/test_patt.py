"""PATT (V-PETL parallel attention adapter): equivalence with references written from
``/work/shared/reference/exact_formulas.md`` (section vpetl_window_attention_patt_kv, generalised to the four modes),
on timm Swin (shifted windows), a Video-Swin-like 3D window attention, timm ViT and transformers BERT / BART (cross
attention) / T5 / CLIP / ViT; init schemes; shared down projection; errors; parameter counts on Swin-B against
vpetl.md; and the shared property suite (gradients, base weights, save/load, remove).

The references below use only the host's weights and the adapter's weights (read as plain tensors), never
``peft_core.tuners.patt``. Equivalence tests run in float64.
"""

from __future__ import annotations

import copy
import functools

import peft_core.tuners.patt.model  # noqa: F401  (registers the method and presets)
import pytest
import timm
import torch
import torch.nn.functional as F
from common import Case, PetlCommonTests, ToyWindowAttention3D
from peft_core import (
    TargetError,
    adapter_parameters,
    adapter_records,
    add_adapter,
    count_parameters,
    delete_adapter,
    disable_adapters,
    iter_layers,
    make_config,
    mark_trainable,
    remove_adapters,
)
from peft_core.testing import build_tiny, output_tensor
from peft_core.tuners.patt import PattConfig, PattLayer
from torch import nn

DT = torch.float64
ATOL = 1e-10
MODES = ["patt_kv", "patt_qv", "patt_qk", "patt_qkv"]


# ------------------------------------------------------------------------------------------------ references
def adapter_weights(layer: PattLayer) -> dict[str, torch.Tensor]:
    a = layer.adapter
    return {"down_w": a.down.weight.detach(), "down_b": a.down.bias.detach(), "up_w": a.up.weight.detach(),
            "up_b": a.up.bias.detach()}


def ref_adapter(x, down_w, down_b, up_w, up_b):
    return F.linear(torch.tanh(F.linear(x, down_w, down_b)), up_w, up_b)


def ref_patt_qkv(attn, x, *, w, s, mode):
    """q, k, v (B, H, N, d) of a fused-qkv attention with the PATT update ``+ s * slice`` on the mode's letters."""
    b, n, c = x.shape
    h = attn.num_heads
    qkv = F.linear(x, attn.qkv.weight, attn.qkv.bias).reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
    qkv = {"q": qkv[0], "k": qkv[1], "v": qkv[2]}
    letters = mode.removeprefix("patt_")
    ad = ref_adapter(x, **w).reshape(b, n, len(letters), h, c // h).permute(2, 0, 3, 1, 4)
    for i, letter in enumerate(letters):
        qkv[letter] = qkv[letter] + s * ad[i]
    return qkv


def ref_window_attention_patt(attn, x, mask=None, *, w, s, mode):
    """exact_formulas.md vpetl_window_attention_patt_kv, with the adapter output split over the mode's letters."""
    b_, n, c = x.shape
    h = attn.num_heads
    qkv = ref_patt_qkv(attn, x, w=w, s=s, mode=mode)
    q, k, v = qkv["q"], qkv["k"], qkv["v"]
    q = q * (c // h) ** -0.5
    a = q @ k.transpose(-2, -1)
    table, index = attn.relative_position_bias_table, attn.relative_position_index
    bias = table[index[:n, :n].reshape(-1)].reshape(n, n, -1).permute(2, 0, 1)
    a = a + bias[None]
    if mask is not None:
        nw = mask.shape[0]
        a = (a.view(b_ // nw, nw, h, n, n) + mask[None, :, None]).view(-1, h, n, n)
    a = a.softmax(-1)
    out = (a @ v).transpose(1, 2).reshape(b_, n, c)
    return F.linear(out, attn.proj.weight, attn.proj.bias)


def ref_vit_attention_patt(attn, x, *args, w, s, mode, **kwargs):
    """timm ViT attention (no mask, no qk-norm) with the PATT update on the [q | k | v] reshaped projection."""
    b, n, c = x.shape
    qkv = ref_patt_qkv(attn, x, w=w, s=s, mode=mode)
    a = ((qkv["q"] * attn.scale) @ qkv["k"].transpose(-2, -1)).softmax(-1)
    out = (a @ qkv["v"]).transpose(1, 2).reshape(b, n, c)
    return F.linear(out, attn.proj.weight, attn.proj.bias)


class RefProjection(nn.Module):
    """``W x + b + s * slice(up(tanh(down(x))))`` from the projection's own input (a frozen copy of the weights)."""

    def __init__(self, lin: nn.Linear, w: dict[str, torch.Tensor], s: float, start: int, end: int) -> None:
        super().__init__()
        self.weight = lin.weight.detach().clone()
        self.bias = None if lin.bias is None else lin.bias.detach().clone()
        self.w, self.s, self.start, self.end = {k: v.clone() for k, v in w.items()}, s, start, end

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + self.s * ref_adapter(x, **self.w)[..., self.start : self.end]


TRIPLES = [("query", "key", "value"), ("q_proj", "k_proj", "v_proj"), ("q", "k", "v")]


def double_inputs(inputs: dict) -> dict:
    return {k: v.to(DT) if v.is_floating_point() else v for k, v in inputs.items()}


def tiny_swin(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = timm.models.swin_transformer.SwinTransformer(img_size=56, patch_size=4, embed_dim=32, depths=(2, 2),
                                                         num_heads=(2, 4), window_size=7, num_classes=5)
    return model.eval().to(DT)


class ToyVideoSwin(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.ModuleDict({"attn": ToyWindowAttention3D()}) for _ in range(2)])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = x + block["attn"](x, mask)
        return x


def shift_like_mask(nw: int, n: int, seed: int = 0) -> torch.Tensor:
    """A (nW, N, N) additive 0/-100 mask like Swin's shifted-window mask."""
    g = torch.Generator().manual_seed(seed)
    region = torch.randint(0, 3, (nw, n), generator=g)
    return (region[:, :, None] != region[:, None, :]).to(DT) * -100.0


# --------------------------------------------------------------------------------------- equivalence: Swin
@pytest.mark.parametrize("mode", MODES)
def test_swin_shifted_window_attention_matches_reference(mode: str) -> None:
    model = tiny_swin()
    block = model.layers[0].blocks[1]
    assert any(block.shift_size) and block.attn_mask is not None, "expected a shifted-window block"
    add_adapter(model, make_config("patt-kv-m128", mode=mode, mid_dim=16))
    layer = block.attn.petl["default"]
    x = torch.randn(2 * block.attn_mask.shape[0], 49, 32, dtype=DT, generator=torch.Generator().manual_seed(1))
    out = block.attn(x, mask=block.attn_mask)
    ref = ref_window_attention_patt(block.attn, x, block.attn_mask, w=adapter_weights(layer), s=0.8, mode=mode)
    torch.testing.assert_close(out, ref, rtol=0, atol=ATOL)
    with disable_adapters(model):
        assert (block.attn(x, mask=block.attn_mask) - out).abs().max() > 1e-3, "upstream init must perturb K/V"


@pytest.mark.parametrize("mode", ["patt_kv", "patt_qkv"])
def test_swin_whole_model_matches_reference(mode: str) -> None:
    """Every WindowAttention of the reference copy runs the exact_formulas computation (shifted blocks included)."""
    model = tiny_swin()
    reference = copy.deepcopy(model)
    add_adapter(model, make_config("patt-kv-m128", mode=mode, mid_dim=8, scale=0.5))
    for host_name, _, layer in iter_layers(model):
        attn = reference.get_submodule(host_name)
        attn.forward = functools.partial(ref_window_attention_patt, attn, w=adapter_weights(layer), s=0.5, mode=mode)
    x = torch.randn(2, 3, 56, 56, dtype=DT, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(model(x), reference(x), rtol=0, atol=ATOL)
    assert len(adapter_records(model)["default"].hosts) == 4


@pytest.mark.parametrize("mode", MODES)
def test_video_swin_like_3d_window_attention(mode: str) -> None:
    """Duck-typed on the ``qkv`` Linear: a WindowAttention3D-like host with a clamped window (N < window volume)."""
    torch.manual_seed(0)
    model = ToyVideoSwin().to(DT).eval()
    add_adapter(model, PattConfig(mode=mode, mid_dim=5, scale=0.3, init="upstream"))
    assert adapter_records(model)["default"].hosts == ["blocks.0.attn", "blocks.1.attn"]
    x = torch.randn(6, 9, 16, dtype=DT)  # N = 9 < 18: index sliced [:9, :9]
    mask = shift_like_mask(3, 9)
    h = x
    for block in model.blocks:
        w = adapter_weights(block["attn"].petl["default"])
        h = h + ref_window_attention_patt(block["attn"], h, mask, w=w, s=0.3, mode=mode)
    torch.testing.assert_close(model(x, mask), h, rtol=0, atol=ATOL)


def test_targeting_the_fused_linear_equals_targeting_the_attention() -> None:
    a, b = tiny_swin(), tiny_swin()
    add_adapter(a, make_config("patt-kv-m64", mid_dim=8))
    add_adapter(b, make_config("patt-kv-m64", mid_dim=8, target_modules=["attn.qkv"]))
    assert all(h.endswith("attn.qkv") for h in adapter_records(b)["default"].hosts)
    pa, pb = adapter_parameters(a), adapter_parameters(b)
    with torch.no_grad():
        for (ka, va), (kb, vb) in zip(pa.items(), pb.items(), strict=True):
            assert ka.replace(".attn.petl", ".attn.qkv.petl") == kb
            vb.copy_(va)
    x = torch.randn(1, 3, 56, 56, dtype=DT)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


# --------------------------------------------------------------------------------- equivalence: timm ViT
@pytest.mark.parametrize("mode", ["patt_kv", "patt_qk"])
def test_timm_vit_matches_reference(mode: str) -> None:
    model, inputs = build_tiny("timm_vit")
    model = model.to(DT)
    reference = copy.deepcopy(model)
    add_adapter(model, make_config("patt-kv-m64", mode=mode, mid_dim=8))
    for host_name, _, layer in iter_layers(model):
        attn = reference.get_submodule(host_name)
        attn.forward = functools.partial(ref_vit_attention_patt, attn, w=adapter_weights(layer), s=0.8, mode=mode)
    x = double_inputs(inputs(0))
    torch.testing.assert_close(model(**x), reference(**x), rtol=0, atol=ATOL)


# ----------------------------------------------------------------------- equivalence: separate projections
def reference_with_projections(model: nn.Module, base: nn.Module, mode: str, s: float) -> nn.Module:
    """A copy of ``base`` whose adapted q/k/v Linears compute ``W x + b + s * slice(adapter(x))``."""
    reference = copy.deepcopy(base)
    letters = mode.removeprefix("patt_")
    for host_name, host, layer in iter_layers(model):
        names = next(t for t in TRIPLES if all(isinstance(host._modules.get(n), nn.Linear) for n in t))
        w = adapter_weights(layer)
        offset = 0
        ref_host = reference.get_submodule(host_name)
        for letter in letters:
            name = names["qkv".index(letter)]
            lin = ref_host._modules[name]
            setattr(ref_host, name, RefProjection(lin, w, s, offset, offset + lin.out_features))
            offset += lin.out_features
    return reference


@pytest.mark.parametrize(("model_name", "mode"), [
    ("bert", "patt_kv"), ("bert", "patt_qkv"), ("bart", "patt_kv"), ("bart", "patt_qkv"),
    ("t5", "patt_kv"), ("clip", "patt_qk"), ("vit", "patt_kv"),
])
def test_separate_projections_match_reference(model_name: str, mode: str) -> None:
    model, inputs = build_tiny(model_name)
    model = model.to(DT)
    base = copy.deepcopy(model)
    add_adapter(model, make_config("patt-kv-m64", mode=mode, mid_dim=8, scale=0.7))
    reference = reference_with_projections(model, base, mode, 0.7)
    x = double_inputs(inputs(0))
    out, ref = output_tensor(model(**x)), output_tensor(reference(**x))
    torch.testing.assert_close(out, ref, rtol=0, atol=ATOL)
    with disable_adapters(model):
        torch.testing.assert_close(output_tensor(model(**x)), output_tensor(base(**x)), rtol=0, atol=0)
    assert (out - output_tensor(base(**x))).abs().max() > 1e-4


def test_bart_cross_attention_uses_encoder_states_and_shares_down_projection() -> None:
    model, inputs = build_tiny("bart")
    add_adapter(model, make_config("patt-kv-m64", mode="patt_kv", mid_dim=8))
    calls: dict[str, list[tuple[int, ...]]] = {}
    for host_name, _, layer in iter_layers(model):
        layer.adapter.down.register_forward_hook(
            lambda m, a, o, name=host_name: calls.setdefault(name, []).append(tuple(a[0].shape)))
    model(**inputs(0))
    enc_len, dec_len = 7, 5
    cross = [n for n in calls if n.endswith("encoder_attn")]
    assert len(cross) == 2 and len(calls) == 6
    for name, shapes in calls.items():
        # K and V see the same tensor: tanh(Down(x)) is computed once per attention forward
        expected = enc_len if (name.endswith("encoder_attn") or ".encoder." in name) else dec_len
        assert shapes == [(2, expected, 32)], (name, shapes)


def test_self_attention_computes_the_adapter_once_for_qkv() -> None:
    model, inputs = build_tiny("bert")
    add_adapter(model, make_config("patt-qkv-m128", mid_dim=8))
    counts = []
    for _, _, layer in iter_layers(model):
        counts.append(0)
        i = len(counts) - 1
        layer.adapter.down.register_forward_hook(lambda *a, i=i: counts.__setitem__(i, counts[i] + 1))
    model(**inputs(0))
    model(**inputs(1))
    assert counts == [2, 2]  # one per forward per layer
    assert all(not layer._cache for _, _, layer in iter_layers(model))  # nothing kept after the forward


# ---------------------------------------------------------------------------------------------- init
@pytest.mark.parametrize("model_name", ["timm_swin", "bert", "bart"])
def test_zero_up_init_is_identity(model_name: str) -> None:
    model, inputs = build_tiny(model_name)
    base = output_tensor(model(**inputs(0))).detach()
    add_adapter(model, make_config("patt", mode="patt_qkv", mid_dim=8))
    for _, _, layer in iter_layers(model):
        assert torch.count_nonzero(layer.adapter.up.weight) == 0 and torch.count_nonzero(layer.adapter.up.bias) == 0
        assert torch.count_nonzero(layer.adapter.down.weight) > 0
    torch.testing.assert_close(output_tensor(model(**inputs(0))), base, rtol=0, atol=0)


def test_upstream_init_is_default_linear_init_and_perturbs() -> None:
    model, inputs = build_tiny("timm_swin")
    base = output_tensor(model(**inputs(0))).detach()
    torch.manual_seed(5)
    add_adapter(model, make_config("patt-kv-m128"))
    layer = model.layers[0].blocks[0].attn.petl["default"]
    torch.manual_seed(5)
    expect_down, expect_up = nn.Linear(32, 128), nn.Linear(128, 64)
    torch.testing.assert_close(layer.adapter.down.weight, expect_down.weight, rtol=0, atol=0)
    torch.testing.assert_close(layer.adapter.up.bias, expect_up.bias, rtol=0, atol=0)
    assert (output_tensor(model(**inputs(0))) - base).abs().max() > 1e-3


def test_presets() -> None:
    kv128, qkv128, kv64 = make_config("patt-kv-m128"), make_config("patt-qkv-m128"), make_config("patt-kv-m64")
    assert (kv128.mode, kv128.mid_dim, kv128.scale, kv128.init) == ("patt_kv", 128, 0.8, "upstream")
    assert (qkv128.mode, qkv128.mid_dim, qkv128.scale, qkv128.init) == ("patt_qkv", 128, 0.8, "upstream")
    assert (kv64.mode, kv64.mid_dim, kv64.init) == ("patt_kv", 64, "upstream")
    default = make_config("patt")
    assert (default.mode, default.mid_dim, default.scale, default.init) == ("patt_kv", 64, 0.2, "zero_up")


# ------------------------------------------------------------------------------------ gradients, adapters
def test_gradients_only_on_patt_parameters_swin() -> None:
    model, inputs = build_tiny("timm_swin")
    add_adapter(model, make_config("patt-qkv-m128", mid_dim=8))
    mark_trainable(model)
    output_tensor(model(**inputs(0))).pow(2).mean().backward()
    for name, p in model.named_parameters():
        if ".petl.default.adapter." in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None and not p.requires_grad, name


def test_two_adapters_add_and_delete() -> None:
    model, inputs = build_tiny("timm_swin")
    base = output_tensor(model(**inputs(0))).detach()
    add_adapter(model, make_config("patt-kv-m64", mid_dim=4), "a")
    only_a = output_tensor(model(**inputs(0))).detach()
    add_adapter(model, make_config("patt-qkv-m128", mid_dim=4), "b")
    both = output_tensor(model(**inputs(0))).detach()
    assert (both - only_a).abs().max() > 1e-4
    delete_adapter(model, "b")
    torch.testing.assert_close(output_tensor(model(**inputs(0))), only_a, rtol=0, atol=0)
    remove_adapters(model)
    torch.testing.assert_close(output_tensor(model(**inputs(0))), base, rtol=0, atol=0)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# -------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(("field", "value"), [
    ("mode", "patt_kq"), ("mode", "prefix_kv"), ("mid_dim", 0), ("mid_dim", 1.5), ("mid_dim", True), ("scale", 0.0),
    ("scale", -0.8), ("scale", "0.8"), ("init", "lora"), ("bias", "yes"),
])
def test_config_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"{field}="):
        PattConfig(**{field: value})


def test_config_json_round_trip() -> None:
    config = make_config("patt-qkv-m128", exclude_modules=["layers.0.blocks.0.attn"])
    assert PattConfig.from_dict(config.to_dict()) == config


def test_multihead_attention_is_rejected() -> None:
    model, _ = build_tiny("torch_transformer")
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(TargetError, match=r"nn\.MultiheadAttention"):
        add_adapter(model, make_config("patt"))
    with pytest.raises(TargetError, match=r"does not support nn\.MultiheadAttention"):
        add_adapter(model, make_config("patt", target_modules=["self_attn"]))
    assert not list(iter_layers(model)) and list(model.state_dict()) == list(state)


def test_module_without_projections_is_rejected() -> None:
    model, _ = build_tiny("bert")
    with pytest.raises(TargetError, match=r"fused `qkv` nn\.Linear"):
        add_adapter(model, make_config("patt", target_modules=["attention.output"]))
    assert not list(iter_layers(model)) and not adapter_records(model)


def test_fused_linear_not_divisible_by_three_is_rejected() -> None:
    model, _ = build_tiny("toy_mlp")  # lin0: 16 -> 32
    with pytest.raises(TargetError, match="divisible by 3"):
        add_adapter(model, make_config("patt", target_modules=["lin0"]))


def test_projections_with_different_input_sizes_are_rejected() -> None:
    class Cross(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q_proj, self.k_proj, self.v_proj = nn.Linear(8, 8), nn.Linear(12, 8), nn.Linear(12, 8)

    model = nn.Sequential(Cross())
    add_adapter(model, make_config("patt", mode="patt_kv"))  # k and v share their input size: fine
    with pytest.raises(TargetError, match="in_features differ"):
        add_adapter(model, make_config("patt", mode="patt_qv"), "qv")
    assert list(adapter_records(model)) == ["default"]


def test_model_without_attention_is_rejected() -> None:
    model, _ = build_tiny("toy_conv")
    with pytest.raises(TargetError, match="found no attention module"):
        add_adapter(model, make_config("patt"))


# --------------------------------------------------------------------------- parameter counts (vpetl.md)
SWIN_B_BLOCK_DIMS = [128] * 2 + [256] * 2 + [512] * 18 + [1024] * 2


@pytest.fixture(scope="module")
def swin_b() -> nn.Module:
    """timm swin_base_patch4_window7_224 (embed 128, depths 2-2-18-2, heads 4-8-16-32 as Video Swin-B), built on
    the meta device: only parameter shapes matter for the counts."""
    with torch.device("meta"):
        return timm.create_model("swin_base_patch4_window7_224", pretrained=False)


def trainable_with(model: nn.Module, config: object) -> int:
    add_adapter(model, config, "count")
    try:
        mark_trainable(model)
        return count_parameters(model).trainable
    finally:
        delete_adapter(model, "count")


@pytest.mark.parametrize(("mid", "paper_m"), [(8, 0.31), (16, 0.60), (32, 1.18), (64, 2.34), (128, 4.65),
                                              (256, 9.27)])
def test_patt_kv_counts_on_swin_b(swin_b: nn.Module, mid: int, paper_m: float) -> None:
    expected = sum(c * mid + mid + mid * 2 * c + 2 * c for c in SWIN_B_BLOCK_DIMS)
    got = trainable_with(swin_b, make_config("patt-kv-m128", mid_dim=mid))
    assert got == expected
    assert round(got / 1e6, 2) == paper_m
    if mid == 128:
        assert got == 4_647_424


def test_patt_qkv_count_on_swin_b(swin_b: nn.Module) -> None:
    expected = sum(c * 128 + 128 + 128 * 3 * c + 3 * c for c in SWIN_B_BLOCK_DIMS)
    got = trainable_with(swin_b, make_config("patt-qkv-m128"))
    assert got == expected and round(got / 1e6, 2) == 6.20


@pytest.mark.parametrize(("r", "paper_m"), [(8, 0.20), (16, 0.40), (32, 0.78), (64, 1.55), (128, 3.10)])
def test_adaptformer_counts_on_swin_b(swin_b: nn.Module, r: int, paper_m: float) -> None:
    """The existing ``adaptformer-64`` preset (parallel to every ``mlp``): C*r + r + r*C + C per block."""
    config = make_config("adaptformer-64", bottleneck_dim=r)
    got = trainable_with(swin_b, config)
    assert got == sum(c * r + r + r * c + c for c in SWIN_B_BLOCK_DIMS)
    assert round(got / 1e6, 2) == paper_m


@pytest.mark.parametrize(("classes", "paper_m"), [(51, 6.25), (174, 6.38)])
def test_readme_recipe_total_on_swin_b(classes: int, paper_m: float) -> None:
    """README: --ffn_adapt (r=64) + --att_prefix patt_kv m=128 + a new head (HMDB51 51 / SSv2 174 classes)."""
    with torch.device("meta"):
        model = timm.create_model("swin_base_patch4_window7_224", pretrained=False, num_classes=classes)
    add_adapter(model, make_config("adaptformer-64"), "ffn")
    add_adapter(model, make_config("patt-kv-m128"), "patt")
    mark_trainable(model, extra=["head.fc"])
    got = count_parameters(model).trainable
    head = 1024 * classes + classes  # == upstream Conv3d(1024, classes, 1): 52,275 / 178,350
    assert got == 1_553_664 + 4_647_424 + head
    assert round(got / 1e6, 2) == paper_m


def test_adaptformer_targets_every_swin_mlp(swin_b: nn.Module) -> None:
    record = add_adapter(swin_b, make_config("adaptformer-64"), "where")
    try:
        assert len(record.hosts) == 24 and all(h.endswith(".mlp") for h in record.hosts)
    finally:
        delete_adapter(swin_b, "where")


# ------------------------------------------------------------------------------ shared property suite
CASES = [
    Case("timm_swin", "patt"),
    Case("timm_swin", "patt-kv-m128", identity=False),
    Case("timm_vit", "patt-kv-m64", (("mode", "patt_qv"), ("bias", False)), identity=False),
    Case("bert", "patt-qkv-m128", identity=False),
    Case("bart", "patt", (("mode", "patt_qkv"),)),
]


class TestPattCommon(PetlCommonTests):
    CASES = CASES
