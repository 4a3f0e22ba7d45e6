"""Prefix tuning on windowed attention: disabled == stock timm forward (bit for bit), equivalence with a reference
written independently (softmax over [prefix keys | window keys], relative position bias only on the window keys,
shift mask padded with zeros, window index b % nW), shifted windows in a whole Swin, a Video-Swin-like 3D window
attention, the MLP reparametrisation, several adapters on one host, composition with PATT, errors, and the shared
property suite. Equivalence tests run in float64.
"""

from __future__ import annotations

import copy
import functools
import pickle

import peft_core.tuners.patt.model  # registers patt (composition test)
import peft_core.tuners.window_prefix.model  # noqa: F401  (registers window_prefix)
import pytest
import timm
import torch
import torch.nn.functional as F
from common import Case, PetlCommonTests, ToyWindowAttention3D
from peft_core import (
    TargetError,
    adapter_records,
    add_adapter,
    count_parameters,
    delete_adapter,
    disable_adapters,
    iter_layers,
    make_config,
    mark_trainable,
    remove_adapters,
    set_active_adapters,
)
from peft_core.testing import build_tiny, output_tensor
from peft_core.tuners.window_prefix import WindowPrefixConfig, WindowPrefixLayer
from torch import nn

DT = torch.float64
ATOL = 1e-10


# ------------------------------------------------------------------------------------------------ reference
def ref_prefix_window_attention(attn, x, mask=None, *, pk, pv, qkv_fn=None):
    """Window attention with prefix keys/values, computed blockwise: logits to the prefix (no bias, never masked)
    and to the window keys (relative position bias + the mask of window ``b % nW``), one softmax over both."""
    b_, n, c = x.shape
    h = attn.num_heads
    d = c // h
    length = pk.shape[0]
    qkv_out = qkv_fn(x) if qkv_fn is not None else F.linear(x, attn.qkv.weight, attn.qkv.bias)
    qkv = qkv_out.reshape(b_, n, 3, h, d).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * d**-0.5, qkv[1], qkv[2]
    pk_h = pk.reshape(length, h, d).permute(1, 0, 2)  # (h, L, d)
    pv_h = pv.reshape(length, h, d).permute(1, 0, 2)
    to_prefix = torch.einsum("bhnd,hld->bhnl", q, pk_h)
    table, index = attn.relative_position_bias_table, attn.relative_position_index
    bias = table[index[:n, :n].reshape(-1)].reshape(n, n, h).permute(2, 0, 1)
    to_window = torch.einsum("bhnd,bhmd->bhnm", q, k) + bias[None]
    if mask is not None:
        window_of = torch.arange(b_) % mask.shape[0]
        to_window = to_window + mask[window_of][:, None]
    probs = torch.cat([to_prefix, to_window], dim=-1).softmax(-1)
    out = torch.einsum("bhnl,hld->bhnd", probs[..., :length], pv_h) + probs[..., length:] @ v
    return F.linear(out.transpose(1, 2).reshape(b_, n, c), attn.proj.weight, attn.proj.bias)


def prefixes_of(layer: WindowPrefixLayer) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's prefixes, recomputed from its parameters (the MLP written out for ``reparam``)."""
    if not layer.reparam:
        return layer.prefix_key.detach(), layer.prefix_value.detach()
    e = layer.embedding.weight.detach()
    lin1, lin2 = layer.mlp[0], layer.mlp[2]
    kv = F.linear(torch.tanh(F.linear(e, lin1.weight, lin1.bias)), lin2.weight, lin2.bias).detach()
    return kv[:, : layer.attn_dim], kv[:, layer.attn_dim :]


def tiny_swin(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = timm.models.swin_transformer.SwinTransformer(img_size=56, patch_size=4, embed_dim=32, depths=(2, 2),
                                                         num_heads=(2, 4), window_size=7, num_classes=5)
    return model.eval().to(DT)


def images(seed: int = 0, dtype: torch.dtype = DT) -> torch.Tensor:
    return torch.randn(2, 3, 56, 56, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def shift_like_mask(nw: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    region = torch.randint(0, 3, (nw, n), generator=g)
    return (region[:, :, None] != region[:, None, :]).to(DT) * -100.0


# ----------------------------------------------------------------------------------- disabled == stock
@pytest.mark.parametrize("fused_attn", [False, True])
def test_disabled_equals_stock_bit_for_bit(fused_attn: bool) -> None:
    model, inputs = build_tiny("timm_swin")
    for m in model.modules():
        if type(m).__name__ == "WindowAttention":
            m.fused_attn = fused_attn
    x = inputs(0)
    base = output_tensor(model(**x)).detach()
    add_adapter(model, make_config("window_prefix", num_tokens=3))
    assert (output_tensor(model(**x)) - base).abs().max() > 1e-5
    with disable_adapters(model):
        assert torch.equal(output_tensor(model(**x)), base)
    remove_adapters(model)
    assert not [n for n, m in model.named_modules() if "forward" in m.__dict__]
    assert torch.equal(output_tensor(model(**x)), base)


# --------------------------------------------------------------------------------------------- reference
@pytest.mark.parametrize("reparam", [False, True])
@pytest.mark.parametrize("shifted", [False, True])
def test_window_attention_matches_reference(reparam: bool, shifted: bool) -> None:
    model = tiny_swin()
    block = model.layers[0].blocks[1 if shifted else 0]
    mask = block.attn_mask
    assert (mask is not None) == shifted
    add_adapter(model, make_config("window_prefix", num_tokens=5, reparam=reparam, mid_dim=12, init_std=0.5))
    layer = block.attn.petl["default"]
    pk, pv = prefixes_of(layer)
    torch.testing.assert_close(torch.cat(layer.prefixes(), -1), torch.cat([pk, pv], -1), rtol=0, atol=0)
    x = torch.randn(2 * 4, 49, 32, dtype=DT, generator=torch.Generator().manual_seed(1))
    out = block.attn(x, mask=mask)
    ref = ref_prefix_window_attention(block.attn, x, mask, pk=pk, pv=pv)
    torch.testing.assert_close(out, ref, rtol=0, atol=ATOL)


def test_prefix_columns_get_no_bias_and_no_mask() -> None:
    """A prefix key equal to a window key gets exactly the logit that key would have without bias and mask."""
    model = tiny_swin()
    attn = model.layers[0].blocks[1].attn
    add_adapter(model, make_config("window_prefix", num_tokens=1), "p")
    layer = attn.petl["p"]
    x = torch.randn(4, 49, 32, dtype=DT, generator=torch.Generator().manual_seed(3))
    k_all = F.linear(x, attn.qkv.weight, attn.qkv.bias)[..., 32:64]
    with torch.no_grad():
        layer.prefix_key.copy_(k_all[0, 10:11])
        layer.prefix_value.zero_()
    captured = {}
    attn.attn_drop.register_forward_hook(lambda m, a, o: captured.setdefault("p", a[0]))
    mask = model.layers[0].blocks[1].attn_mask[-1:]  # the last window mixes regions: the mask is not all zero
    assert (mask[0, :, 10] != 0).any()
    attn(x[:1], mask=mask)
    probs = captured["p"]  # (1, heads, N, 1 + N)
    q = F.linear(x[:1], attn.qkv.weight, attn.qkv.bias)[..., :32].reshape(1, 49, 2, 16).transpose(1, 2) * 0.25
    k = k_all[:1].reshape(1, 49, 2, 16).transpose(1, 2)
    raw = q @ k.transpose(-2, -1)  # logits without bias/mask
    # ratio prefix / window key 10 = exp(raw - (raw + bias + mask)) for key 10
    bias = attn.relative_position_bias_table[attn.relative_position_index.reshape(-1)].reshape(49, 49, 2)
    bias = bias.permute(2, 0, 1)[None]
    expected = torch.exp(-(bias + mask[:, None])[..., 10])
    torch.testing.assert_close(probs[..., 0] / probs[..., 11], expected.expand_as(raw[..., 10]), rtol=1e-9, atol=0)


@pytest.mark.parametrize("reparam", [False, True])
def test_whole_swin_with_shifted_windows_matches_reference(reparam: bool) -> None:
    model = tiny_swin()
    reference = copy.deepcopy(model)
    add_adapter(model, make_config("window_prefix", num_tokens=4, reparam=reparam, mid_dim=8, init_std=0.3))
    for host_name, _, layer in iter_layers(model):
        attn = reference.get_submodule(host_name)
        pk, pv = prefixes_of(layer)
        attn.forward = functools.partial(ref_prefix_window_attention, attn, pk=pk, pv=pv)
    torch.testing.assert_close(model(images(2)), reference(images(2)), rtol=0, atol=ATOL)


def test_video_swin_like_3d_window_attention() -> None:
    torch.manual_seed(0)
    attn = ToyWindowAttention3D().to(DT)
    model = nn.Sequential(attn)
    x = torch.randn(6, 9, 16, dtype=DT)  # N = 9 < 18 tokens of the full window: index sliced [:9, :9]
    mask = shift_like_mask(3, 9)
    base = attn(x, mask)
    add_adapter(model, WindowPrefixConfig(num_tokens=3, init_std=0.5))
    layer = attn.petl["default"]
    pk, pv = prefixes_of(layer)
    torch.testing.assert_close(attn(x, mask), ref_prefix_window_attention(attn, x, mask, pk=pk, pv=pv),
                               rtol=0, atol=ATOL)
    torch.testing.assert_close(attn(x), ref_prefix_window_attention(attn, x, None, pk=pk, pv=pv), rtol=0, atol=ATOL)
    with disable_adapters(model):
        assert torch.equal(attn(x, mask), base)


# ---------------------------------------------------------------------------------- several adapters
def test_two_adapters_on_one_host_concatenate_prefixes() -> None:
    model = tiny_swin()
    base = model(images(0))
    add_adapter(model, make_config("window_prefix", num_tokens=2, init_std=0.4), "a")
    add_adapter(model, make_config("window_prefix", num_tokens=3, init_std=0.4), "b")
    reference = copy.deepcopy(model)
    remove_adapters(reference)
    for host_name, host, _ in iter_layers(model, "a"):
        (ak, av), (bk, bv) = prefixes_of(host.petl["a"]), prefixes_of(host.petl["b"])
        attn = reference.get_submodule(host_name)
        attn.forward = functools.partial(ref_prefix_window_attention, attn, pk=torch.cat([ak, bk]),
                                         pv=torch.cat([av, bv]))
    torch.testing.assert_close(model(images(0)), reference(images(0)), rtol=0, atol=ATOL)
    set_active_adapters(model, "b")
    only_b = model(images(0))
    delete_adapter(model, "a")
    torch.testing.assert_close(model(images(0)), only_b, rtol=0, atol=0)
    assert all("forward" in host.__dict__ for _, host, _ in iter_layers(model))
    delete_adapter(model, "b")
    assert not [n for n, m in model.named_modules() if "forward" in m.__dict__]
    assert torch.equal(model(images(0)), base)


def test_composes_with_patt_on_the_same_attention() -> None:
    """PATT's hook on ``qkv`` still acts inside the prefix forward: K, V get s*dK, s*dV, then the prefixes join."""
    model = tiny_swin()
    add_adapter(model, make_config("patt-kv-m128", mid_dim=6), "patt")
    add_adapter(model, make_config("window_prefix", num_tokens=2, init_std=0.4), "prefix")
    attn = model.layers[0].blocks[1].attn
    patt = attn.petl["patt"].adapter
    pk, pv = prefixes_of(attn.petl["prefix"])

    def qkv_fn(x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, attn.qkv.weight, attn.qkv.bias)
        ad = F.linear(torch.tanh(F.linear(x, patt.down.weight, patt.down.bias)), patt.up.weight, patt.up.bias)
        return torch.cat([out[..., :32], out[..., 32:] + 0.8 * ad], dim=-1)

    x = torch.randn(8, 49, 32, dtype=DT, generator=torch.Generator().manual_seed(4))
    mask = model.layers[0].blocks[1].attn_mask
    ref = ref_prefix_window_attention(attn, x, mask, pk=pk, pv=pv, qkv_fn=qkv_fn)
    torch.testing.assert_close(attn(x, mask=mask), ref.detach(), rtol=0, atol=ATOL)
    remove_adapters(model)
    assert "forward" not in attn.__dict__ and not attn.qkv._forward_hooks


def test_deepcopy_and_pickle_bind_the_override_to_the_copy() -> None:
    model = tiny_swin()
    add_adapter(model, make_config("window_prefix", num_tokens=2, init_std=0.4))
    out = model(images(0))
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        torch.testing.assert_close(clone(images(0)), out, rtol=0, atol=0)
        for _, host, layer in iter_layers(clone):
            assert host.forward.host is host
            with torch.no_grad():
                layer.prefix_value.add_(1.0)
        assert (clone(images(0)) - out).abs().max() > 1e-4
    torch.testing.assert_close(model(images(0)), out, rtol=0, atol=0)


# ------------------------------------------------------------------------------------- params, grads
@pytest.mark.parametrize("reparam", [False, True])
def test_parameter_count(reparam: bool) -> None:
    model = tiny_swin()
    add_adapter(model, make_config("window_prefix", num_tokens=6, reparam=reparam, mid_dim=10))
    mark_trainable(model)
    dims = [32, 32, 64, 64]
    per_layer = (lambda c: 6 * c + c * 10 + 10 + 10 * 2 * c + 2 * c) if reparam else (lambda c: 2 * 6 * c)
    assert count_parameters(model).trainable == sum(per_layer(c) for c in dims)


def test_gradients_only_on_prefix_parameters() -> None:
    model = tiny_swin()
    add_adapter(model, make_config("window_prefix", num_tokens=4))
    mark_trainable(model)
    model(images(1)).pow(2).mean().backward()
    for name, p in model.named_parameters():
        if ".petl.default." in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None and not p.requires_grad, name


# --------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(("field", "value"), [
    ("num_tokens", 0), ("num_tokens", 2.5), ("num_tokens", True), ("mid_dim", -1), ("init_std", 0.0),
    ("init_std", "0.02"), ("reparam", "yes"),
])
def test_config_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"{field}="):
        WindowPrefixConfig(**{field: value})


def test_config_json_round_trip() -> None:
    config = WindowPrefixConfig(num_tokens=8, reparam=True, mid_dim=32)
    assert WindowPrefixConfig.from_dict(config.to_dict()) == config


def test_model_without_window_attention_is_rejected() -> None:
    model, _ = build_tiny("toy_mlp")
    with pytest.raises(TargetError, match="found no window attention"):
        add_adapter(model, make_config("window_prefix"))


def test_attention_without_relative_position_bias_is_rejected() -> None:
    model, _ = build_tiny("timm_vit")
    with pytest.raises(TargetError, match="relative position bias"):
        add_adapter(model, make_config("window_prefix", target_modules=["attn"]))
    assert not list(iter_layers(model)) and not [m for m in model.modules() if "forward" in m.__dict__]


def test_swin_v2_cosine_attention_is_rejected() -> None:
    model = timm.create_model("swinv2_tiny_window8_256", pretrained=False, img_size=32, embed_dim=16, depths=(1,),
                              num_heads=(2,), window_size=4)
    with pytest.raises(TargetError, match="cosine attention"):
        add_adapter(model, make_config("window_prefix", target_modules=["attn"]))


def test_foreign_forward_override_is_rejected() -> None:
    model = tiny_swin()
    attn = model.layers[0].blocks[0].attn
    attn.forward = lambda x, mask=None: x
    with pytest.raises(TargetError, match="instance-level forward"):
        add_adapter(model, make_config("window_prefix", target_modules=["layers.0.blocks.0.attn"]))
    assert not adapter_records(model) and not list(iter_layers(model))


# ------------------------------------------------------------------------------ shared property suite
CASES = [
    Case("timm_swin", "window_prefix", identity=False),
    Case("timm_swin", "window_prefix", (("reparam", True), ("num_tokens", 3)), identity=False),
]


class TestWindowPrefixCommon(PetlCommonTests):
    CASES = CASES
