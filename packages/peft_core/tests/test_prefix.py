"""Prefix tuning and the attention interception layer (CPU, tiny models built from configs).

Every transformers family runs with ``eager`` and ``sdpa``; ``nn.MultiheadAttention`` with ``batch_first`` both ways.
References are computed here from the hosts' own q/k/v projections with explicit float64 attention math.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, ClassVar

import peft_core.tuners.prefix.model  # noqa: F401  (registers the method and presets)
import pytest
import torch
from common import Case, PetlCommonTests
from peft_core import (
    adapter_parameters,
    adapter_records,
    add_adapter,
    count_parameters,
    delete_adapter,
    disable_adapters,
    iter_layers,
    load_adapter,
    make_config,
    mark_trainable,
    remove_adapters,
    save_adapter,
    set_active_adapters,
)
from peft_core.attention import (
    KEY_PREFIX,
    causal_prefix_mask,
    describe_attention,
    enable_interception,
    is_intercepted,
    mha_forward_with_extra,
    pad_attention_mask,
    split_heads,
)
from peft_core.targeting import TargetError
from peft_core.testing import build_tiny, output_tensor
from peft_core.tuners.prefix import PrefixConfig, PrefixLayer, attention_kind, collapse_prefix_mlp
from torch import nn
from torch.nn import functional as F

FAMILIES = ["bert", "roberta", "bart", "t5", "clip", "vit"]
IMPLS = ["eager", "sdpa"]
TEXT = {"bert", "roberta", "bart", "t5", "clip"}


# ---------------------------------------------------------------------------------------------------------- models
class TorchNet(nn.Module):
    """nn.TransformerEncoder + nn.TransformerDecoder (encoder self, decoder causal self, cross attention)."""

    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.batch_first = batch_first
        enc = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=batch_first)
        dec = nn.TransformerDecoderLayer(16, 4, 32, dropout=0.0, batch_first=batch_first)
        self.encoder = nn.TransformerEncoder(enc, 2, enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(dec, 2)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor, src_key_padding_mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        if not self.batch_first:
            src, tgt = src.transpose(0, 1), tgt.transpose(0, 1)
        causal = nn.Transformer.generate_square_subsequent_mask(tgt.shape[0 if not self.batch_first else 1])
        memory = self.encoder(src, src_key_padding_mask=src_key_padding_mask)
        out = self.decoder(tgt, memory, tgt_mask=causal, memory_key_padding_mask=src_key_padding_mask)
        return out if self.batch_first else out.transpose(0, 1)


def torch_inputs(seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[-1, -2:] = True
    return {"src": torch.randn(2, 6, 16, generator=g), "tgt": torch.randn(2, 4, 16, generator=g),
            "src_key_padding_mask": mask}


def tiny(family: str, impl: str, seed: int = 0) -> tuple[nn.Module, Callable[[int], dict]]:
    if family == "torch":
        torch.manual_seed(seed)
        return TorchNet(impl == "batch_first").eval(), torch_inputs
    model, inputs = build_tiny(family, seed)
    if impl != "eager":
        model.set_attn_implementation(impl)
    return model, inputs


CASES = [(f, i) for f in FAMILIES for i in IMPLS] + [("torch", "batch_first"), ("torch", "seq_first")]
ALL_KINDS = ["encoder_self", "decoder_self", "cross"]


def prefix_config(**kw: Any) -> PrefixConfig:
    return PrefixConfig(**{"num_virtual_tokens": 3, "attentions": ALL_KINDS, **kw})


def run(model: nn.Module, inputs: dict) -> torch.Tensor:
    return output_tensor(model(**inputs))


def perturb_all(model: nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter_parameters(model).values():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


# -------------------------------------------------------------------------- (b) one attention layer vs. reference
def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pk: torch.Tensor, pv: torch.Tensor,
                        heads: int, scale: float, allowed: torch.Tensor | None = None,
                        bias: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q [pk; k]^T * scale + [0; bias], masked) [pv; v] per head; q (B, Sq, D), k/v (B, Sk, D), pk/pv (P, D);
    allowed (B, Sq, Sk) bool over the real keys (the prefix is always allowed)."""
    batch, sq, _ = q.shape
    num = pk.shape[0]

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)

    keys = torch.cat([pk.expand(batch, -1, -1), k], dim=1)
    values = torch.cat([pv.expand(batch, -1, -1), v], dim=1)
    scores = split(q) @ split(keys).transpose(-1, -2) * scale
    if bias is not None:
        scores = scores + torch.cat([torch.zeros(*bias.shape[:-1], num, dtype=bias.dtype), bias], dim=-1)
    if allowed is not None:
        full = torch.cat([torch.ones(batch, sq, num, dtype=torch.bool), allowed], dim=-1)[:, None]
        scores = scores.masked_fill(~full, float("-inf"))
    out = scores.softmax(-1) @ split(values)
    return out.transpose(1, 2).reshape(batch, sq, -1)


# family -> [(host, (q, k, v, out) names, cross?, mask rule)]
SITES: dict[str, list[tuple[str, tuple[str, str, str, str | None], bool, str | None]]] = {
    "bert": [("encoder.layer.1.attention.self", ("query", "key", "value", None), False, "pad")],
    "roberta": [("encoder.layer.1.attention.self", ("query", "key", "value", None), False, "pad")],
    "bart": [("model.encoder.layers.1.self_attn", ("q_proj", "k_proj", "v_proj", "out_proj"), False, "pad"),
             ("model.decoder.layers.1.self_attn", ("q_proj", "k_proj", "v_proj", "out_proj"), False, "causal"),
             ("model.decoder.layers.1.encoder_attn", ("q_proj", "k_proj", "v_proj", "out_proj"), True, "pad")],
    "t5": [("encoder.block.1.layer.0.SelfAttention", ("q", "k", "v", "o"), False, "pad"),
           ("decoder.block.1.layer.0.SelfAttention", ("q", "k", "v", "o"), False, "causal"),
           ("decoder.block.1.layer.1.EncDecAttention", ("q", "k", "v", "o"), True, "pad")],
    "clip": [("text_model.encoder.layers.1.self_attn", ("q_proj", "k_proj", "v_proj", "out_proj"), False,
              "causal_pad"),
             ("vision_model.encoder.layers.1.self_attn", ("q_proj", "k_proj", "v_proj", "out_proj"), False, None)],
    "vit": [("layers.1.attention", ("q_proj", "k_proj", "v_proj", "o_proj"), False, None)],
}


def _allowed(rule: str | None, pad: torch.Tensor, batch: int, sq: int, sk: int) -> torch.Tensor | None:
    if rule is None:
        return None
    allowed = torch.ones(batch, sq, sk, dtype=torch.bool)
    if "pad" in rule:
        allowed &= pad.bool()[:, None, :]
    if "causal" in rule:
        allowed &= torch.arange(sk)[None, :] <= torch.arange(sq)[:, None]
    return allowed


def _lin(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    bias = module.bias.double() if module.bias is not None else None
    return F.linear(x.double(), module.weight.double(), bias)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("family", FAMILIES)
def test_attention_layer_matches_reference(family: str, impl: str) -> None:
    model, make_inputs = tiny(family, impl)
    inputs = make_inputs(0)
    add_adapter(model, prefix_config())
    perturb_all(model)
    captured: dict[str, tuple] = {}
    for host_name, *_ in SITES[family]:
        host = model.get_submodule(host_name)
        host.register_forward_hook(
            lambda m, a, kw, out, n=host_name: captured.__setitem__(n, (a, kw, out)), with_kwargs=True)
    model(**inputs)
    for host_name, (qn, kn, vn, on), cross, rule in SITES[family]:
        host = model.get_submodule(host_name)
        layer = host.petl["default"]
        args, kwargs, output = captured[host_name]
        x = args[0] if args else kwargs["hidden_states"]
        kv = kwargs["key_value_states"] if cross else x
        heads = next(getattr(host, a) for a in ("num_heads", "num_attention_heads", "n_heads") if hasattr(host, a))
        head_dim = getattr(host, kn).out_features // heads
        scale = 1.0 if family == "t5" else head_dim**-0.5
        pad = inputs["attention_mask"] if (cross or rule in ("pad", "causal_pad")) else None
        allowed = _allowed(rule, pad, x.shape[0], x.shape[1], kv.shape[1])
        bias = kwargs.get("position_bias")
        bias = bias.double() if bias is not None else None
        q, k, v = _lin(getattr(host, qn), x), _lin(getattr(host, kn), kv), _lin(getattr(host, vn), kv)
        ref = attention_reference(q, k, v, layer.prefix_key.double(), layer.prefix_value.double(), heads, scale,
                                  allowed, bias)
        if on is not None:
            ref = _lin(getattr(host, on), ref)
        got = output[0]
        torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=2e-5, msg=f"{family}/{impl} {host_name}")


@pytest.mark.parametrize("batch_first", [True, False])
def test_mha_layers_match_reference(batch_first: bool) -> None:
    model, make_inputs = tiny("torch", "batch_first" if batch_first else "seq_first")
    inputs = make_inputs(0)
    add_adapter(model, prefix_config())
    perturb_all(model)
    names = ["encoder.layers.1.self_attn", "decoder.layers.1.self_attn", "decoder.layers.1.multihead_attn"]
    captured: dict[str, tuple] = {}
    for n in names:
        model.get_submodule(n).register_forward_hook(
            lambda m, a, kw, out, n=n: captured.__setitem__(n, (a, kw, out)), with_kwargs=True)
    model(**inputs)
    pad_valid = ~inputs["src_key_padding_mask"]
    for n, rule in zip(names, ["pad", "causal", "pad"]):
        mha = model.get_submodule(n)
        args, _, output = captured[n]
        q_in, kv_in = args[0], args[1]
        if not batch_first:
            q_in, kv_in = q_in.transpose(0, 1), kv_in.transpose(0, 1)
        d = mha.embed_dim
        w, b = mha.in_proj_weight.double(), mha.in_proj_bias.double()
        q = F.linear(q_in.double(), w[:d], b[:d])
        k = F.linear(kv_in.double(), w[d : 2 * d], b[d : 2 * d])
        v = F.linear(kv_in.double(), w[2 * d :], b[2 * d :])
        layer = mha.petl["default"]
        allowed = _allowed(rule, pad_valid, q.shape[0], q.shape[1], k.shape[1])
        ref = attention_reference(q, k, v, layer.prefix_key.double(), layer.prefix_value.double(), mha.num_heads,
                                  (d // mha.num_heads) ** -0.5, allowed)
        ref = _lin(mha.out_proj, ref)
        got = output[0] if batch_first else output[0].transpose(0, 1)
        torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=2e-5, msg=n)


# ----------------------------------------------------------------------------------------- (c) padding invariance
def _trim(family: str, inputs: dict, row: int, keep: int) -> dict:
    out = {}
    for k, v in inputs.items():
        if k in ("input_ids", "attention_mask", "src", "src_key_padding_mask"):
            out[k] = v[row : row + 1, :keep]
        elif isinstance(v, torch.Tensor):
            out[k] = v[row : row + 1]
        else:
            out[k] = v
    return out


def _valid_outputs(family: str, model: nn.Module, inputs: dict) -> list[torch.Tensor]:
    """Outputs whose values must not depend on padding: (tensor, length axis or None)."""
    if family == "torch":
        return [model(**inputs)]
    out = model(**inputs)
    if family in ("bart", "t5"):
        return [out.logits, out.encoder_last_hidden_state]
    if family == "clip":
        return [out.text_model_output.last_hidden_state]
    return [out.last_hidden_state]


@pytest.mark.parametrize(("family", "impl"), [c for c in CASES if c[0] in TEXT | {"torch"}])
def test_padding_invariance(family: str, impl: str) -> None:
    model, make_inputs = tiny(family, impl)
    add_adapter(model, prefix_config())
    perturb_all(model)
    inputs = make_inputs(0)
    mask = inputs.get("attention_mask")
    keep = int(mask[-1].sum()) if mask is not None else int((~inputs["src_key_padding_mask"][-1]).sum())
    padded = _valid_outputs(family, model, inputs)
    alone = _valid_outputs(family, model, _trim(family, inputs, 1, keep))
    # decoder logits (bart/t5) and torch decoder outputs have no padding; encoder-side outputs are compared on valid
    # positions only
    for i, (p, a) in enumerate(zip(padded, alone)):
        encoder_side = not (family in ("bart", "t5", "torch") and i == 0)
        p_row = p[1:2, :keep] if encoder_side else p[1:2]
        torch.testing.assert_close(p_row, a, rtol=1e-4, atol=1e-5, msg=f"output {i}")


@pytest.mark.parametrize("impl", IMPLS)
def test_bart_decoder_padding_and_causal_prefix(impl: str) -> None:
    """Right-padded decoder inputs (explicit 4D mask) and unpadded ones (sdpa: no mask -> explicit causal mask with
    the prefix offset) give the same outputs at valid positions."""
    model, make_inputs = tiny("bart", impl)
    add_adapter(model, prefix_config(attentions=["decoder_self"]))
    perturb_all(model)
    inputs = make_inputs(0)
    dec_mask = torch.ones_like(inputs["decoder_input_ids"])
    dec_mask[0, -2:] = 0
    padded = model(**inputs, decoder_attention_mask=dec_mask).logits
    alone = model(**{**_trim("bart", inputs, 0, 7), "decoder_input_ids": inputs["decoder_input_ids"][:1, :3]}).logits
    torch.testing.assert_close(padded[:1, :3], alone, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------- (d) gradients, optimizer step, base frozen
@pytest.mark.parametrize(("family", "impl"), CASES)
def test_gradients_only_on_prefix_and_base_unchanged(family: str, impl: str) -> None:
    model, make_inputs = tiny(family, impl)
    add_adapter(model, prefix_config(reparameterization="mlp", share_mlp=True, dropout=0.1))
    mark_trainable(model)
    model.train()
    own = {id(p) for p in adapter_parameters(model).values()}
    base = {k: v.detach().clone() for k, v in model.state_dict().items() if ".petl." not in k}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    run(model, make_inputs(0)).float().pow(2).mean().backward()
    for name, p in model.named_parameters():
        if id(p) in own:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient on prefix parameter {name}"
        else:
            assert p.grad is None and not p.requires_grad, f"base parameter {name} got a gradient"
    before = {k: v.detach().clone() for k, v in adapter_parameters(model).items()}
    opt.step()
    after = model.state_dict()
    for k, v in base.items():
        assert torch.equal(after[k], v), f"base weight {k} changed"
    assert any(not torch.equal(before[k], p) for k, p in adapter_parameters(model).items())


# ----------------------------------------------------------------------------------------- (e) save / load
VARIANTS = ["none", "mlp", "shared", "hidden"]


@pytest.mark.parametrize(("family", "impl", "variant"), [(f, i, VARIANTS[n % 4]) for n, (f, i) in enumerate(CASES)])
def test_save_load_round_trip(family: str, impl: str, variant: str, tmp_path: Any) -> None:
    kw = {"none": {}, "mlp": {"reparameterization": "mlp"},
          "shared": {"reparameterization": "mlp", "share_mlp": True, "proj_factor": 2.0, "activation": "relu"},
          "hidden": {"space": "hidden"}}[variant]
    model, make_inputs = tiny(family, impl)
    add_adapter(model, prefix_config(**kw), "task")
    perturb_all(model)
    inputs = make_inputs(3)
    expected = run(model, inputs).detach()
    save_adapter(model, tmp_path, "task")
    fresh, _ = tiny(family, impl)
    load_adapter(fresh, tmp_path, "other")
    assert torch.equal(run(fresh, inputs), expected)


# ---------------------------------------------------- (a) disabled == base exactly, (f) remove restores everything
@pytest.mark.parametrize(("family", "impl"), CASES)
def test_disabled_equals_base_and_remove_restores(family: str, impl: str) -> None:
    model, make_inputs = tiny(family, impl)
    inputs = make_inputs(1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    base = run(model, inputs).detach()
    configs = [m.config for m in model.modules() if hasattr(m, "config") and hasattr(m.config, "_attn_implementation")]
    impls = [c._attn_implementation for c in configs]
    add_adapter(model, prefix_config())
    add_adapter(model, prefix_config(reparameterization="mlp"), "second")
    host_configs = [host.config for _, host, _ in iter_layers(model) if hasattr(host, "config")]
    assert all(c._attn_implementation.startswith(KEY_PREFIX) for c in host_configs)
    assert all(is_intercepted(host) for _, host, _ in iter_layers(model))
    changed = run(model, inputs).detach()
    assert not torch.allclose(changed, base, atol=1e-4), "a prefix must change the output (not identity at init)"
    with disable_adapters(model):
        assert torch.equal(run(model, inputs), base)
    remove_adapters(model)
    assert list(model.state_dict()) == list(state)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert torch.equal(run(model, inputs), base)
    assert [c._attn_implementation for c in configs] == impls
    for m in model.modules():
        assert not is_intercepted(m)
        if isinstance(m, nn.MultiheadAttention):
            assert "forward" not in vars(m) and not m._forward_pre_hooks


@pytest.mark.parametrize(("family", "impl"), [("bart", "sdpa"), ("clip", "eager"), ("torch", "batch_first")])
def test_deepcopy_of_prefixed_model_is_independent(family: str, impl: str) -> None:
    model, make_inputs = tiny(family, impl)
    inputs = make_inputs(0)
    base = run(model, inputs).detach()
    add_adapter(model, prefix_config())
    perturb_all(model)
    out = run(model, inputs).detach()
    clone = copy.deepcopy(model)
    assert torch.equal(run(clone, inputs), out)
    remove_adapters(clone)
    assert torch.equal(run(clone, inputs), base)
    assert torch.equal(run(model, inputs), out), "removing from the copy must not touch the original"
    remove_adapters(model)
    assert torch.equal(run(model, inputs), base)
    for m in (*model.modules(), *clone.modules()):
        assert not is_intercepted(m)
        config = getattr(m, "config", None)
        assert not str(getattr(config, "_attn_implementation", "")).startswith(KEY_PREFIX)


def test_delete_one_of_two_adapters_keeps_interception() -> None:
    model, make_inputs = tiny("bart", "sdpa")
    inputs = make_inputs(0)
    add_adapter(model, prefix_config())
    add_adapter(model, prefix_config(), "b")
    perturb_all(model)
    delete_adapter(model, "b")
    assert model.config._attn_implementation == KEY_PREFIX + "sdpa"
    only_default = run(model, inputs).detach()
    with disable_adapters(model):
        base = run(model, inputs).detach()
    assert not torch.allclose(only_default, base)
    delete_adapter(model, "default")
    assert model.config._attn_implementation == "sdpa"


# ----------------------------------------------------------------------------------------- formulas
def test_shared_mlp_matches_ofa_prompt_encoder() -> None:
    """OFA: Embedding(L, d) -> Linear(d, proj) -> ReLU -> Linear(proj, layers * 2 d); view(B, L, layers * 2, H, hd)
    -> permute(2, 0, 3, 1, 4) -> split(2): layer i keys = chunk 2i, values = chunk 2i + 1."""
    model, _ = tiny("bart", "eager")
    add_adapter(model, make_config("prefix-ofa-projection", num_virtual_tokens=5))
    hosts = [f"model.encoder.layers.{i}.self_attn" for i in range(2)]
    layers = [model.get_submodule(h).petl["default"] for h in hosts]
    mlp = layers[0].shared_mlp
    assert "shared_mlp" not in layers[1]._modules  # registered (saved, trained) once per stack
    d, heads, batch, num = 32, 4, 3, 5
    assert mlp.proj_in.out_features == 2 * d and mlp.proj_out.out_features == 2 * 2 * d
    with torch.no_grad():
        tokens = torch.arange(num).expand(batch, -1)
        full = mlp.proj_out(torch.relu(mlp.proj_in(mlp.embedding(tokens))))
        pkv = full.view(batch, num, 2 * 2, heads, d // heads).permute(2, 0, 3, 1, 4).split(2)
        for i, layer in enumerate(layers):
            layer.eval()
            site = describe_attention(model.get_submodule(hosts[i]))
            k, v = layer.extra_kv(site, batch)
            torch.testing.assert_close(split_heads(k, heads, d // heads), pkv[i][0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(split_heads(v, heads, d // heads), pkv[i][1], rtol=1e-5, atol=1e-6)
    # the decoder stack has its own MLP
    dec = model.get_submodule("model.decoder.layers.0.self_attn").petl["default"]
    assert dec.shared_mlp is not mlp


def test_per_layer_mlp_formula_and_dropout() -> None:
    model, _ = tiny("bert", "eager")
    add_adapter(model, prefix_config(reparameterization="mlp", proj_dim=12, activation="tanh", dropout=0.5))
    host = model.get_submodule("encoder.layer.0.attention.self")
    layer, site = host.petl["default"], describe_attention(host)
    mlp = layer.mlp
    assert mlp.proj_in.out_features == 12 and mlp.proj_out.out_features == 64
    with torch.no_grad():
        flat = mlp.proj_out(torch.tanh(mlp.proj_in(mlp.embedding.weight)))
        layer.eval()
        k, v = layer.extra_kv(site, 2)
        torch.testing.assert_close(k[0], flat[:, :32])
        torch.testing.assert_close(v[1], flat[:, 32:])
        layer.train()
        k, _ = layer.extra_kv(site, 2)
    assert not torch.equal(k[0], k[1]), "dropout must act per batch element"
    kept = k[0] != 0
    torch.testing.assert_close(k[0][kept], flat[:, :32][kept] * 2.0)


def test_hidden_space_matches_uniperceiver_deep_prompt() -> None:
    """Uni-Perceiver (pre-LN): kv = [norm1(P); norm1(x)], padding mask prepended with zeros, q = norm1(x)."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True, norm_first=True)
    model = nn.Sequential(layer)
    add_adapter(model, make_config("deep-prompt-uniperceiver", num_virtual_tokens=4))
    perturb_all(model)
    prompt = layer.self_attn.petl["default"].prompt
    x = torch.randn(2, 5, 16)
    pad = torch.zeros(2, 5, dtype=torch.bool)
    pad[1, -2:] = True
    captured = {}
    layer.self_attn.register_forward_hook(lambda m, a, kw, out: captured.setdefault("out", out), with_kwargs=True)
    layer(x, src_key_padding_mask=pad)
    h = layer.norm1(x)
    kv = torch.cat([layer.norm1(prompt).expand(2, -1, -1), h], dim=1)
    kpm = torch.cat([torch.zeros(2, 4, dtype=torch.bool), pad], dim=1)
    ref = nn.MultiheadAttention.forward(layer.self_attn, h, kv, kv, key_padding_mask=kpm, need_weights=False)[0]
    torch.testing.assert_close(captured["out"][0], ref, rtol=1e-5, atol=1e-6)


def test_hidden_space_with_vit_pre_ln_norm() -> None:
    model, _ = tiny("vit", "sdpa")
    add_adapter(model, prefix_config(space="hidden", hidden_norm="layernorm_before"))
    host = model.get_submodule("layers.0.attention")
    layer = host.petl["default"]
    norm = model.get_submodule("layers.0.layernorm_before")
    k, v = layer.raw_kv(describe_attention(host))
    torch.testing.assert_close(k, host.k_proj(norm(layer.prompt)))
    torch.testing.assert_close(v, host.v_proj(norm(layer.prompt)))
    assert sorted(n.rsplit(".", 1)[-1] for n in adapter_parameters(model)) == ["prompt", "prompt"]


def test_two_active_prefix_adapters_concatenate() -> None:
    model, make_inputs = tiny("bart", "sdpa")
    inputs = make_inputs(0)
    add_adapter(model, prefix_config(num_virtual_tokens=2), "a")
    add_adapter(model, prefix_config(num_virtual_tokens=3), "b")
    perturb_all(model)
    both = run(model, inputs).detach()
    merged, _ = tiny("bart", "sdpa")
    add_adapter(merged, prefix_config(num_virtual_tokens=5))
    with torch.no_grad():
        for name, _, layer in iter_layers(merged):
            a = model.get_submodule(name).petl["a"]
            b = model.get_submodule(name).petl["b"]
            layer.prefix_key.copy_(torch.cat([a.prefix_key, b.prefix_key]))
            layer.prefix_value.copy_(torch.cat([a.prefix_value, b.prefix_value]))
    torch.testing.assert_close(run(merged, inputs), both, rtol=1e-5, atol=1e-6)
    set_active_adapters(model, "a")
    assert not torch.allclose(run(model, inputs), both)


def test_collapse_mlp_keeps_outputs_and_saves_direct(tmp_path: Any) -> None:
    model, make_inputs = tiny("t5", "eager")
    inputs = make_inputs(0)
    add_adapter(model, make_config("prefix-ofa-projection", num_virtual_tokens=4, dropout=0.0))
    perturb_all(model)
    before = run(model, inputs).detach()
    n_before = count_parameters(model).total
    config = collapse_prefix_mlp(model)
    assert config.reparameterization == "none" and adapter_records(model)["default"].config is config
    torch.testing.assert_close(run(model, inputs), before, rtol=1e-5, atol=1e-6)
    layers = [layer for _, _, layer in iter_layers(model)]
    assert all(set(dict(layer.named_parameters())) == {"prefix_key", "prefix_value"} for layer in layers)
    assert count_parameters(model).total < n_before
    save_adapter(model, tmp_path)
    fresh, _ = tiny("t5", "eager")
    load_adapter(fresh, tmp_path)
    torch.testing.assert_close(run(fresh, inputs), before, rtol=1e-5, atol=1e-6)


def test_bart_generate_with_decoder_prefix_matches_full_forward() -> None:
    """Cached generation (one query per step, no mask) equals greedy decoding with full forwards."""
    model, make_inputs = tiny("bart", "sdpa")
    model.generation_config.eos_token_id = None
    model.generation_config.forced_eos_token_id = None
    add_adapter(model, prefix_config())
    perturb_all(model)
    inputs = make_inputs(0)
    out = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=4,
                         min_new_tokens=4, do_sample=False, num_beams=1)
    seq = out[:, :1]
    for _ in range(4):
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], decoder_input_ids=seq,
                       use_cache=False).logits
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)


def test_eager_attention_weights_cover_prefix() -> None:
    model, make_inputs = tiny("bert", "eager")
    add_adapter(model, prefix_config(num_virtual_tokens=3))
    out = model(**make_inputs(0), output_attentions=True)
    assert out.attentions[0].shape == (2, 4, 7, 10)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(2, 4, 7))


# ----------------------------------------------------------------------------------------- nn.MultiheadAttention
def _mha_with_prefix(batch_first: bool) -> tuple[nn.MultiheadAttention, PrefixLayer]:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    holder = nn.Sequential(mha)
    add_adapter(holder, prefix_config(num_virtual_tokens=2), "p")
    return mha, mha.petl["p"]


@pytest.mark.parametrize("batch_first", [True, False])
def test_mha_disabled_equals_stock_all_call_styles(batch_first: bool) -> None:
    mha, layer = _mha_with_prefix(batch_first)
    stock = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    stock.load_state_dict({k: v for k, v in mha.state_dict().items() if not k.startswith("petl.")})
    q = torch.randn(2, 5, 16) if batch_first else torch.randn(5, 2, 16)
    kv = torch.randn(2, 6, 16) if batch_first else torch.randn(6, 2, 16)
    kpm = torch.zeros(2, 6, dtype=torch.bool)
    kpm[0, -1] = True
    layer.active = False
    for kwargs in ({}, {"key_padding_mask": kpm}, {"need_weights": False}, {"average_attn_weights": False}):
        got, want = mha(q, kv, kv, **kwargs), stock(q, kv, kv, **kwargs)
        assert torch.equal(got[0], want[0])
        assert (got[1] is None) == (want[1] is None) and (got[1] is None or torch.equal(got[1], want[1]))


@pytest.mark.parametrize("batch_first", [True, False])
def test_mha_call_styles_agree(batch_first: bool) -> None:
    """Weights path == SDPA path; bool masks == float masks; unbatched == batch of one; layouts agree."""
    mha, layer = _mha_with_prefix(batch_first)
    with torch.no_grad():
        layer.prefix_key.mul_(0.3)
    x = torch.randn(2, 5, 16)
    causal_bool = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)
    causal_float = torch.zeros(5, 5).masked_fill(causal_bool, float("-inf"))
    xi = x if batch_first else x.transpose(0, 1)
    with_w, weights = mha(xi, xi, xi, attn_mask=causal_bool, need_weights=True)
    no_w, none = mha(xi, xi, xi, attn_mask=causal_float, need_weights=False, is_causal=True)
    assert none is None and weights.shape == (2, 5, 7)
    torch.testing.assert_close(with_w, no_w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weights[:, :, 2:].triu(1)[:, :, :5].sum(), torch.tensor(0.0))  # causal over real keys
    per_head = mha(xi, xi, xi, attn_mask=causal_bool.expand(8, 5, 5), average_attn_weights=False)[1]
    torch.testing.assert_close(per_head.mean(1), weights)
    single = mha(x[0], x[0], x[0], attn_mask=causal_bool)[0]
    batched0 = with_w[0] if batch_first else with_w[:, 0]
    torch.testing.assert_close(single, batched0, rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="Need attn_mask"):
        mha(xi, xi, xi, is_causal=True)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")
def test_mha_nested_tensor_fast_path_input() -> None:
    """nn.TransformerEncoder in inference turns padded input into a nested tensor; the intercepted forward handles it
    and equals the padded computation."""
    torch.manual_seed(0)
    enc_layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
    encoder = nn.TransformerEncoder(enc_layer, 2, enable_nested_tensor=True).eval()
    add_adapter(encoder, prefix_config())
    perturb_all(encoder)
    x = torch.randn(2, 6, 16)
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[1, -2:] = True
    with torch.no_grad():
        nested = encoder(x, src_key_padding_mask=pad)
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            plain = encoder(x, src_key_padding_mask=pad)
        finally:
            torch.backends.mha.set_fastpath_enabled(True)
    torch.testing.assert_close(nested[0], plain[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(nested[1, :4], plain[1, :4], rtol=1e-5, atol=1e-6)
    site = describe_attention(encoder.layers[0].self_attn)
    extra = encoder.layers[0].self_attn.petl["default"].extra_kv(site, 1)
    with pytest.raises(ValueError, match="nested-tensor input"):
        nt = torch.nested.nested_tensor([torch.randn(3, 16), torch.randn(2, 16)])
        mha_forward_with_extra(encoder.layers[0].self_attn, extra, nt, nt, nt, attn_mask=torch.zeros(3, 3))


def test_mha_fast_path_is_disabled_while_intercepted() -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True).eval()
    model = nn.Sequential(layer)
    add_adapter(model, prefix_config())
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        fast_allowed = model(x)
        with disable_adapters(model):
            base = model(x)
    assert not torch.allclose(fast_allowed, base, atol=1e-4), "the fused fast path bypassed the prefix"


# ----------------------------------------------------------------------------------------- targeting and kinds
def test_default_targets_by_kind() -> None:
    model, _ = tiny("t5", "eager")
    rec = add_adapter(model, prefix_config(attentions=["cross"]))
    assert rec.hosts == [f"decoder.block.{i}.layer.1.EncDecAttention" for i in range(2)]
    rec = add_adapter(model, PrefixConfig(num_virtual_tokens=2), "selfonly")
    assert rec.hosts == [f"encoder.block.{i}.layer.0.SelfAttention" for i in range(2)] + [
        f"decoder.block.{i}.layer.0.SelfAttention" for i in range(2)]
    torch_model, _ = tiny("torch", "batch_first")
    kinds = {n: attention_kind(n, m) for n, m in torch_model.named_modules() if isinstance(m, nn.MultiheadAttention)}
    assert kinds["encoder.layers.0.self_attn"] == "encoder_self"
    assert kinds["decoder.layers.0.self_attn"] == "decoder_self"
    assert kinds["decoder.layers.0.multihead_attn"] == "cross"
    rec = add_adapter(torch_model, prefix_config(attentions=["decoder_self"], exclude_modules=["layers.1.self_attn"]))
    assert rec.hosts == ["decoder.layers.0.self_attn"]


def test_explicit_targets() -> None:
    model, _ = tiny("bert", "sdpa")
    rec = add_adapter(model, prefix_config(target_modules=["encoder.layer.0.attention.self"]))
    assert rec.hosts == ["encoder.layer.0.attention.self"]


# ----------------------------------------------------------------------------------------- masks (unit)
def test_mask_helpers() -> None:
    bool_mask = torch.tensor([[[[True, False]]]])
    assert pad_attention_mask(bool_mask, 2, 2).tolist() == [[[[True, True, True, False]]]]
    float_mask = torch.tensor([[[[0.0, -5.0]]]])
    assert pad_attention_mask(float_mask, 1, 2).tolist() == [[[[0.0, 0.0, -5.0]]]]
    assert pad_attention_mask(torch.zeros(1, 1, 3, 1), 2, 5).shape == (1, 1, 3, 1)
    with pytest.raises(ValueError, match="does not match the 4 keys"):
        pad_attention_mask(torch.zeros(1, 1, 1, 3), 2, 4)
    causal = causal_prefix_mask(2, 3, 1, device=torch.device("cpu"))
    assert causal[0, 0].tolist() == [[True, True, False, False], [True, True, True, False]]
    additive = causal_prefix_mask(2, 2, 1, device=torch.device("cpu"), dtype=torch.float32)
    assert additive[0, 0, 0, 2] == torch.finfo(torch.float32).min and additive[0, 0, 1].eq(0).all()
    with pytest.raises(ValueError, match="does not match the attention's 4 heads"):
        split_heads(torch.zeros(1, 2, 10), 4, 2)


# ----------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(("kwargs", "field"), [
    ({"num_virtual_tokens": 0}, "num_virtual_tokens"),
    ({"num_virtual_tokens": 2.5}, "num_virtual_tokens"),
    ({"space": "query"}, "space"),
    ({"reparameterization": "lstm"}, "reparameterization"),
    ({"proj_dim": 0}, "proj_dim"),
    ({"proj_factor": -1.0}, "proj_factor"),
    ({"activation": "gelu"}, "activation"),
    ({"dropout": 1.0}, "dropout"),
    ({"attentions": []}, "attentions"),
    ({"attentions": ["self"]}, "attentions"),
    ({"attentions": ["cross", "cross"]}, "attentions"),
    ({"share_mlp": True}, "share_mlp"),
    ({"space": "hidden", "reparameterization": "mlp"}, "reparameterization"),
    ({"hidden_norm": "norm1"}, "hidden_norm"),
])
def test_config_errors_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        PrefixConfig(**kwargs)


def test_unsupported_hosts_raise_target_error() -> None:
    model, _ = tiny("bert", "eager")
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(TargetError, match="flash_attention_2"):
        add_adapter(model, prefix_config())
    assert not list(iter_layers(model))
    model, _ = tiny("bert", "eager")
    with pytest.raises(TargetError, match="can intercept"):
        add_adapter(model, prefix_config(target_modules=["encoder.layer.0.attention.output.dense"]))
    mha = nn.Sequential(nn.MultiheadAttention(16, 4, add_bias_kv=True))
    with pytest.raises(TargetError, match="add_bias_kv"):
        add_adapter(mha, prefix_config())
    with pytest.raises(TargetError, match="hidden_norm='norm9'"):
        add_adapter(nn.Sequential(nn.TransformerEncoderLayer(16, 4, 32)), prefix_config(space="hidden",
                                                                                         hidden_norm="norm9"))
    with pytest.raises(TargetError, match="equal key and value input widths"):
        add_adapter(nn.Sequential(nn.MultiheadAttention(16, 4, kdim=8, vdim=12)), prefix_config(space="hidden"))
    with pytest.raises(TargetError, match="no supported attention"):
        add_adapter(nn.Sequential(nn.Linear(3, 3)), prefix_config())
    timm_vit, _ = build_tiny("timm_vit")
    with pytest.raises(TargetError, match="fused qkv projection is not supported"):
        add_adapter(timm_vit, prefix_config())


def test_collapse_errors() -> None:
    model, _ = tiny("bert", "eager")
    with pytest.raises(ValueError, match="adapter name='default' is not on this model"):
        collapse_prefix_mlp(model)
    import peft_core.tuners.bitfit.model  # noqa: F401

    add_adapter(model, make_config("bitfit"), "bf")
    with pytest.raises(ValueError, match="expected a 'prefix' adapter"):
        collapse_prefix_mlp(model, "bf")


def test_interception_is_reference_counted() -> None:
    mha = nn.MultiheadAttention(16, 4)
    enable_interception(mha)
    enable_interception(mha)
    from peft_core.attention import disable_interception

    disable_interception(mha)
    assert is_intercepted(mha) and "forward" in vars(mha)
    disable_interception(mha)
    assert not is_intercepted(mha) and "forward" not in vars(mha) and not mha._forward_pre_hooks


def test_presets() -> None:
    ofa = make_config("prefix-ofa")
    assert (ofa.num_virtual_tokens, ofa.reparameterization, ofa.dropout, ofa.attentions) == (
        100, "none", 0.2, ["encoder_self", "decoder_self"])
    proj = make_config("prefix-ofa-projection")
    assert (proj.num_virtual_tokens, proj.reparameterization, proj.proj_factor, proj.activation, proj.share_mlp,
            proj.dropout, proj.attentions) == (100, "mlp", 2.0, "relu", True, 0.2, ["encoder_self", "decoder_self"])
    # pi-Tuning's prefix runs (no projection): layers * 2 * L * d per side -> 12 * 2 * 100 * 1024 = 2.46M for OFA-Large
    model, _ = tiny("bart", "eager")
    add_adapter(model, ofa)
    mark_trainable(model)
    assert count_parameters(model).trainable == 2 * (2 * 2 * 100 * 32)
    up = make_config("deep-prompt-uniperceiver")
    assert (up.num_virtual_tokens, up.space, up.reparameterization, up.hidden_norm) == (10, "hidden", "none", "norm1")
    assert PrefixConfig.from_dict(ofa.to_dict()) == ofa


# ----------------------------------------------------------------------------------------- shared property suite
class TestPrefixCommon(PetlCommonTests):
    CASES: ClassVar[list[Case]] = [
        Case("torch_transformer", "deep-prompt-uniperceiver", (("num_virtual_tokens", 3),), identity=False),
    ]
