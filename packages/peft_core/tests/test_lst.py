"""Ladder Side Tuning: side shapes and layer dropping, the gated ladder formula against a reference computation,
magnitude / Fisher pruning (hand example and an independent re-implementation), no backbone activation saved for
backward (saved-tensor hooks, with a LoRA control), the shared property suite, generation, errors, and the T5-base
parameter counts next to vlpet.md's 7.46%."""

from __future__ import annotations

import copy
from typing import ClassVar

import peft_core.tuners.lora
import peft_core.tuners.lst  # noqa: F401  (registers the method and presets)
import pytest
import torch
from common import Case, PetlCommonTests, forward
from peft_core import (
    TargetError,
    adapter_parameters,
    adapter_records,
    add_adapter,
    count_parameters,
    disable_adapters,
    make_config,
    mark_trainable,
    remove_adapters,
)
from peft_core.testing import build_tiny
from peft_core.tuners.lst import LSTConfig, LSTStateError, apply_fisher_init, lst_layer, top_units, unit_scores
from peft_core.zoo import build_model
from torch import nn
from torch.nn import functional as F
from transformers import BertConfig, BertModel


def lst(**kw: object) -> LSTConfig:
    return LSTConfig(**{"reduction_factor": 2, **kw})


def seq2seq_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Next-token cross entropy (the tiny configs carry no decoder_start_token_id for ``labels``)."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), targets[:, 1:].flatten())


# ------------------------------------------------------------------------------------------------ structure
def test_side_network_shapes_layer_dropping_and_block_class() -> None:
    model, _ = build_tiny("t5")  # d 32, d_ff 64, d_kv 8, 4 heads, 2 + 2 layers
    add_adapter(model, lst(reduction_factor=4, side_layers=[1], decoder_side_layers=[0, 1]))
    layer = lst_layer(model)
    assert layer.stack_names == {"encoder": "encoder", "decoder": "decoder"}
    enc, dec = layer.encoder, layer.decoder
    assert list(enc.blocks) == ["1"] and list(dec.blocks) == ["0", "1"]
    assert list(enc.downsamples) == ["1"] and list(dec.gates) == ["0", "1"]
    for side, stack in ((enc, model.encoder), (dec, model.decoder)):
        cfg = side.side_config
        assert (cfg.d_model, cfg.d_ff, cfg.d_kv, cfg.num_heads) == (8, 16, 2, 4)
        assert cfg.is_decoder == stack.is_decoder
        for i, block in side.blocks.items():
            assert type(block) is type(stack.block[int(i)])
        assert side.first_downsample.weight.shape == (8, 32) and side.first_downsample.bias is not None
        assert side.final_norm.weight.shape == (8,) and type(side.final_norm) is type(stack.final_layer_norm)
    # the encoder's dropped layer 0 had the relative position bias; the decoder's block 0 keeps its own
    assert not enc.blocks["1"].layer[0].SelfAttention.has_relative_attention_bias
    assert dec.blocks["0"].layer[0].SelfAttention.has_relative_attention_bias
    assert dec.blocks["1"].layer[1].EncDecAttention.k.weight.shape == (8, 8)
    assert layer.upsample.weight.shape == (32, 8)
    assert adapter_records(model)["default"].hosts == [""]
    assert all(n.startswith("petl.default.") for n in adapter_parameters(model))


def test_gates_start_at_one_half_and_follow_alpha_over_T() -> None:
    model, _ = build_tiny("bert")
    add_adapter(model, lst(gate_alpha=0.3, gate_T=0.2))
    side = lst_layer(model).encoder
    torch.testing.assert_close(side.gate(0), torch.sigmoid(torch.tensor([1.5])))
    model, _ = build_tiny("bert")
    add_adapter(model, lst())
    assert all(torch.equal(lst_layer(model).encoder.gate(i), torch.tensor([0.5])) for i in (0, 1))


def _bert_reference(model: nn.Module, inputs: dict) -> torch.Tensor:
    """s = fd(h_emb); s = mu s + (1 - mu) down_i(h_i); s = block_i(s); out = up(norm(s)), with the backbone states
    and the attention mask taken from hooks on the (adapter-disabled) backbone."""
    states, masks = {}, {}
    handles = [model.encoder.layer[0].register_forward_pre_hook(
        lambda m, a, k: states.__setitem__("emb", a[0]) or masks.__setitem__("mask", a[1]), with_kwargs=True)]
    for i, blk in enumerate(model.encoder.layer):
        handles.append(blk.register_forward_hook(lambda m, a, o, i=i: states.__setitem__(i, o)))
    with disable_adapters(model), torch.no_grad():
        model(**inputs)
    for h in handles:
        h.remove()
    layer = lst_layer(model)
    side = layer.encoder
    s = side.first_downsample(states["emb"])
    for i in side.layers:
        mu = torch.sigmoid(side.gates[str(i)] / side.gate_T)
        s = mu * s + (1 - mu) * side.downsamples[str(i)](states[i])
        s = side.blocks[str(i)](s, masks["mask"])
    return layer.upsample(side.final_norm(s))


def test_encoder_only_output_is_upsampled_gated_ladder() -> None:
    model, make_inputs = build_tiny("bert")
    add_adapter(model, lst(side_layers=[0, 1], gate_alpha=0.0))
    with torch.no_grad():
        for p in adapter_parameters(model).values():
            p.add_(torch.randn_like(p) * 0.05)  # gates leave 0.5, blocks leave their pruned init
    inputs = make_inputs(0)
    out = model(**inputs)
    expected = _bert_reference(model, inputs)
    torch.testing.assert_close(out.last_hidden_state, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.pooler_output, model.pooler(expected), rtol=1e-5, atol=1e-6)  # frozen head reads it


def test_encoder_decoder_side_decoder_reads_side_encoder_and_feeds_lm_head() -> None:
    model, make_inputs = build_tiny("t5")
    add_adapter(model, lst(side_layers=[1]))
    layer = lst_layer(model)
    seen = {}
    hooks = [
        layer.encoder.dropout.register_forward_hook(lambda m, a, o: seen.__setitem__("side_enc", o)),
        layer.decoder.dropout.register_forward_hook(lambda m, a, o: seen.__setitem__("side_dec", o)),
        layer.decoder.blocks["1"].layer[1].EncDecAttention.register_forward_pre_hook(
            lambda m, a, k: seen.__setitem__("kv", k["key_value_states"]), with_kwargs=True),
        model.decoder.block[1].layer[1].EncDecAttention.register_forward_pre_hook(
            lambda m, a, k: seen.__setitem__("backbone_kv", k["key_value_states"]), with_kwargs=True),
        model.encoder.register_forward_hook(lambda m, a, o: seen.__setitem__("enc", o.last_hidden_state)),
    ]
    logits = model(**make_inputs(0)).logits
    for h in hooks:
        h.remove()
    assert seen["kv"] is seen["side_enc"] and seen["kv"].shape[-1] == 16
    assert seen["backbone_kv"] is seen["enc"]                      # the backbone decoder keeps the backbone encoder
    expected = model.lm_head(layer.upsample(seen["side_dec"]) * model.model_dim**-0.5)
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ pruning
def test_top_units_and_unit_scores_hand_example() -> None:
    assert top_units(torch.tensor([0.1, 5.0, 3.0, 0.2]), 2).tolist() == [1, 2]
    assert top_units(torch.tensor([0.1, 5.0, 3.0, 0.2, 9.0, 8.0, 0.0, 7.0]), 4, groups=2).tolist() == [1, 2, 4, 5]
    assert top_units(torch.tensor([1.0, 1.0, 1.0]), 2).tolist() == [0, 1]        # ties keep the lower index
    w = torch.tensor([[1.0, -2.0, 0.0], [0.5, 0.5, -4.0]])                      # (out=2, in=3)
    assert unit_scores(w, ("ffn", "res"), "ffn").tolist() == [3.0, 5.0]        # row L1
    assert unit_scores(w, ("ffn", "res"), "res").tolist() == [1.5, 2.5, 4.0]   # column L1
    assert unit_scores(w, ("ffn", "res"), "ffn", {"res": torch.tensor([0, 1])}).tolist() == [3.0, 1.0]
    with pytest.raises(ValueError, match="cannot keep"):
        top_units(torch.ones(6), 3, groups=2)


def test_magnitude_pruning_keeps_top_rows_hand_example() -> None:
    """One BERT layer, d 8, 2 heads of 4, d_ff 8, r 2. Small random weights everywhere, then large entries that make
    residual units {2, 5, 6, 7}, FFN units {0, 3, 4, 6} and attention units {1, 2} (head 0), {4, 7} (head 1) win."""
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=20, hidden_size=8, num_attention_heads=2, intermediate_size=8,
                                 num_hidden_layers=1, max_position_embeddings=16, attn_implementation="eager"))
    blk = model.encoder.layer[0]
    res, ffn, attn = [2, 5, 6, 7], [0, 3, 4, 6], [1, 2, 4, 7]
    with torch.no_grad():
        for p in blk.parameters():
            p.uniform_(0.0, 0.01)
        w_int = blk.intermediate.dense.weight
        w_int[:, res] = 0.5
        w_int[torch.tensor(ffn)[:, None], torch.tensor(res)] = 1.0
        blk.attention.self.query.weight[attn] = 0.3
    add_adapter(model, lst(init="magnitude"))
    side = lst_layer(model).encoder.blocks["0"]
    r, f, a = (torch.tensor(x) for x in (res, ffn, attn))
    exp = {
        "intermediate.dense.weight": w_int[f][:, r], "intermediate.dense.bias": blk.intermediate.dense.bias[f],
        "attention.self.query.weight": blk.attention.self.query.weight[a][:, r],
        "attention.self.key.bias": blk.attention.self.key.bias[a],
        "attention.output.dense.weight": blk.attention.output.dense.weight[r][:, a],
        "output.dense.weight": blk.output.dense.weight[r][:, f], "output.LayerNorm.bias": blk.output.LayerNorm.bias[r],
    }
    got = dict(side.named_parameters())
    for name, value in exp.items():
        assert torch.equal(got[name], value), name


def _t5_reference_indices(model: nn.Module, layer: nn.Module, r: int) -> tuple[torch.Tensor, dict]:
    """Independent re-implementation of the group-L1 selection for T5 (loops over named weights)."""
    def l1(w: torch.Tensor, keep_dim: int) -> torch.Tensor:
        return w.abs().sum(dim=1 - keep_dim) if w.dim() == 2 else w.abs()

    blocks = [(role, i, getattr(model, role).block[i]) for role in ("encoder", "decoder")
              for i in getattr(layer, role).layers]
    res = torch.zeros(model.config.d_model)
    for _, _, blk in blocks:
        for n, w in blk.named_parameters():
            if n.endswith(("q.weight", "k.weight", "v.weight", "wi.weight")):
                res += l1(w, 1)
            elif n.endswith(("o.weight", "wo.weight", "layer_norm.weight")):
                res += l1(w, 0)
    res += model.encoder.final_layer_norm.weight.abs() + model.decoder.final_layer_norm.weight.abs()
    d_s = model.config.d_model // r
    res_idx = torch.sort(torch.argsort(res, descending=True, stable=True)[:d_s]).values
    out = {}
    heads, dkv = model.config.num_heads, model.config.d_kv
    for role, i, blk in blocks:
        sel = {}
        for group, attn in (("attn", "layer.0.SelfAttention"), ("xattn", "layer.1.EncDecAttention")):
            if role == "encoder" and group == "xattn":
                continue
            mod = blk.get_submodule(attn)
            score = sum(getattr(mod, x).weight[:, res_idx].abs().sum(1) for x in "qkv")
            score = score + mod.o.weight[res_idx].abs().sum(0)
            per = [torch.argsort(score[h * dkv:(h + 1) * dkv], descending=True, stable=True)[: dkv // r] + h * dkv
                   for h in range(heads)]
            sel[group] = torch.sort(torch.cat(per)).values
        ff = blk.layer[-1].DenseReluDense
        score = ff.wi.weight[:, res_idx].abs().sum(1) + ff.wo.weight[res_idx].abs().sum(0)
        sel["ffn"] = torch.sort(torch.argsort(score, descending=True, stable=True)[: model.config.d_ff // r]).values
        out[(role, i)] = sel
    return res_idx, out


def test_magnitude_pruning_matches_independent_reference_on_t5() -> None:
    model, _ = build_tiny("t5")
    add_adapter(model, lst(side_layers=[0, 1], decoder_side_layers=[1]))
    layer = lst_layer(model)
    res, sel = _t5_reference_indices(model, layer, 2)
    for role in ("encoder", "decoder"):
        side, stack = getattr(layer, role), getattr(model, role)
        torch.testing.assert_close(side.final_norm.weight, stack.final_layer_norm.weight[res], rtol=0, atol=0)
        for i in side.layers:
            s, b, g = side.blocks[str(i)], stack.block[i], sel[(role, i)]
            att = b.layer[0].SelfAttention
            assert torch.equal(s.layer[0].SelfAttention.q.weight, att.q.weight[g["attn"]][:, res])
            assert torch.equal(s.layer[0].SelfAttention.o.weight, att.o.weight[res][:, g["attn"]])
            assert torch.equal(s.layer[0].layer_norm.weight, b.layer[0].layer_norm.weight[res])
            s_ff, b_ff = s.layer[-1].DenseReluDense, b.layer[-1].DenseReluDense
            assert torch.equal(s_ff.wi.weight, b_ff.wi.weight[g["ffn"]][:, res])
            assert torch.equal(s_ff.wo.weight, b_ff.wo.weight[res][:, g["ffn"]])
            if role == "decoder":
                x = b.layer[1].EncDecAttention
                assert torch.equal(s.layer[1].EncDecAttention.v.weight, x.v.weight[g["xattn"]][:, res])
            if att.has_relative_attention_bias:
                assert torch.equal(s.layer[0].SelfAttention.relative_attention_bias.weight,
                                   att.relative_attention_bias.weight)


def test_fisher_init_uses_squared_gradients_of_the_plain_backbone() -> None:
    model, make_inputs = build_tiny("t5")
    add_adapter(model, lst(side_layers=[1]))
    layer = lst_layer(model)
    magnitude = {k: v.clone() for k, v in layer.state_dict().items()}
    batches = []
    for seed in range(3):
        x = make_inputs(seed)
        batches.append({"input_ids": x["input_ids"][:1], "attention_mask": x["attention_mask"][:1],
                        "decoder_input_ids": x["decoder_input_ids"][:1]})
    loss_fn = lambda m, b: seq2seq_loss(m(**b).logits, b["decoder_input_ids"])
    importance = apply_fisher_init(model, batches, loss_fn)
    # independent diagonal Fisher on a plain copy of the backbone
    plain = copy.deepcopy(model)
    remove_adapters(plain)
    params = {n: p for n, p in plain.named_parameters() if n in importance}
    assert set(params) == set(layer.backbone_parameter_names())
    for p in params.values():
        p.requires_grad_(True)
    manual = {n: torch.zeros_like(p) for n, p in params.items()}
    for b in batches:
        grads = torch.autograd.grad(seq2seq_loss(plain(**b).logits, b["decoder_input_ids"]), list(params.values()))
        for n, g in zip(params, grads):
            manual[n] += g.square()
    for n in params:
        torch.testing.assert_close(importance[n] * len(batches), manual[n], rtol=1e-4, atol=1e-10)
    res, chosen = layer.prune_indices(model, manual)
    q = model.decoder.block[1].layer[0].SelfAttention.q.weight
    expected_q = q[chosen["decoder"][1]["attn"]][:, res]
    assert torch.equal(layer.decoder.blocks["1"].layer[0].SelfAttention.q.weight, expected_q)
    now = layer.state_dict()
    assert any(not torch.equal(now[k], magnitude[k]) for k in now if ".blocks." in k)
    assert all(torch.equal(now[k], magnitude[k]) for k in now if "sample" in k or "gates" in k)


# ------------------------------------------------------------------------------------------------ memory
def saved_backbone_outputs(model: nn.Module, stacks: list[nn.Module], inputs: dict) -> tuple[set, set]:
    """Run forward under saved-tensor hooks. Returns (names of backbone modules inside ``stacks`` whose outputs were
    saved for backward, excluding the ladder inputs), (ladder inputs that were saved: block outputs, block-0 input).
    Every recorded output stays referenced until the end, so no storage is reused by another tensor."""
    produced: dict[int, str] = {}
    ladder: set[int] = set()
    keep: list[torch.Tensor] = []
    handles = []

    def record(name: str):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            if isinstance(output, torch.Tensor):
                items = [output]
            else:
                items = output.values() if isinstance(output, dict) else output if isinstance(output, tuple) else []
            for t in items:
                if isinstance(t, torch.Tensor):
                    keep.append(t)
                    produced.setdefault(t.untyped_storage().data_ptr(), name)
        return hook

    for stack in stacks:
        for name, module in stack.named_modules():
            if name and ".petl." not in f".{name}.":
                handles.append(module.register_forward_hook(record(name)))
        blocks = stack.block if hasattr(stack, "block") else stack.layer
        for blk in blocks:
            handles.append(blk.register_forward_hook(
                lambda m, a, o: ladder.add((o[0] if isinstance(o, tuple) else o).untyped_storage().data_ptr())))
        handles.append(blocks[0].register_forward_pre_hook(
            lambda m, a: ladder.add(a[0].untyped_storage().data_ptr())))
    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward(model, inputs).pow(2).mean()
    for h in handles:
        h.remove()
    offending = {produced[p] for p in saved if p in produced and p not in ladder}
    return offending, {p for p in saved if p in ladder}


@pytest.mark.parametrize("name", ["t5", "bert"])
def test_no_backbone_activation_is_saved_for_backward(name: str) -> None:
    def stacks(model: nn.Module) -> list[nn.Module]:
        return [model.encoder, model.decoder] if name == "t5" else [model.encoder]

    model, make_inputs = build_tiny(name)
    add_adapter(model, lst())
    mark_trainable(model)
    offending, ladder = saved_backbone_outputs(model, stacks(model), make_inputs(0))
    assert not offending, f"backbone activations saved for backward: {sorted(offending)[:6]}"
    assert ladder, "the ladder down-samplers should keep the backbone states they read"
    # control: LoRA inside the backbone must be caught by the same detector
    model, make_inputs = build_tiny(name)
    add_adapter(model, make_config("lora"))
    mark_trainable(model)
    offending, _ = saved_backbone_outputs(model, stacks(model), make_inputs(0))
    assert any("ttention" in n for n in offending), f"the detector must see what LoRA saves: {sorted(offending)}"


def test_backbone_blocks_run_without_autograd_and_grad_mode_is_restored() -> None:
    model, make_inputs = build_tiny("t5")
    add_adapter(model, lst())
    mark_trainable(model)
    modes = []
    handle = model.encoder.block[1].layer[0].SelfAttention.register_forward_hook(
        lambda m, a, o: modes.append((torch.is_grad_enabled(), o[0].requires_grad)))
    out = forward(model, make_inputs(0))
    handle.remove()
    assert modes == [(False, False)] and torch.is_grad_enabled() and out.requires_grad


def test_error_inside_a_block_restores_grad_mode_and_hooks() -> None:
    model, make_inputs = build_tiny("t5")
    add_adapter(model, lst())

    def boom(module: nn.Module, args: tuple) -> None:
        assert not torch.is_grad_enabled()  # inside a backbone block
        raise RuntimeError("boom")

    handle = model.encoder.block[1].layer[1].register_forward_pre_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        model(**make_inputs(0))
    handle.remove()
    assert torch.is_grad_enabled()
    assert all(not b._forward_hooks and not b._forward_pre_hooks for b in [*model.encoder.block, *model.decoder.block])
    assert forward(model, make_inputs(0)).requires_grad


def test_deepcopy_after_a_forward_gives_an_independent_working_copy() -> None:
    model, make_inputs = build_tiny("t5")
    add_adapter(model, lst())
    mark_trainable(model)
    x = make_inputs(0)
    out = forward(model, x)
    twin = copy.deepcopy(model)  # the side encoder output of the last call is not copied
    torch.testing.assert_close(forward(twin, x), out, rtol=0, atol=0)
    with torch.no_grad():
        lst_layer(twin).upsample.bias.add_(1.0)
    assert not torch.equal(forward(twin, x), forward(model, x))
    remove_adapters(twin)
    assert not hasattr(twin, "petl") and hasattr(model, "petl")


# ------------------------------------------------------------------------------------------------ shared suite
class TestLSTCommon(PetlCommonTests):
    CASES: ClassVar[list[Case]] = [
        Case("t5", "lst-vl-t5", (("reduction_factor", 2),), identity=False),
        Case("t5", "lst-t5-base", (("side_layers", [1]), ("decoder_side_layers", [0]), ("reduction_factor", 4)),
             identity=False),
        Case("roberta", "lst", (("reduction_factor", 4), ("side_layers", [1]), ("bias_sampling", False)),
             identity=False),
    ]


# ------------------------------------------------------------------------------------------------ VL and generation
def test_trainable_visual_embedding_gets_gradients_through_the_side_stream() -> None:
    from peft_core.zoo_vl import VLSeq2Seq

    t5, make_inputs = build_tiny("t5")
    model = VLSeq2Seq(t5, feat_dim=6).eval()
    add_adapter(model, lst(modules_to_save=["visual_embedding"]))
    mark_trainable(model)
    x = make_inputs(0)
    vis = torch.randn(2, 3, 6)
    boxes = torch.rand(2, 3, 4)
    logits = model(x["input_ids"], vis, boxes, attention_mask=x["attention_mask"],
                   decoder_input_ids=x["decoder_input_ids"]).logits
    seq2seq_loss(logits, x["decoder_input_ids"]).backward()
    assert model.visual_embedding.feat_embedding[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in model.model.named_parameters() if ".petl." not in f".{n}.")


def test_greedy_and_beam_generation_without_cache() -> None:
    model, make_inputs = build_tiny("t5")
    add_adapter(model, lst())
    x = make_inputs(0)
    x.pop("decoder_input_ids")
    gen = model.generate(**x, max_new_tokens=4, do_sample=False, use_cache=False, decoder_start_token_id=0)
    seq = torch.zeros(2, 1, dtype=torch.long)
    with torch.no_grad():
        for _ in range(gen.shape[1] - 1):
            nxt = model(input_ids=x["input_ids"], attention_mask=x["attention_mask"], decoder_input_ids=seq,
                        use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(gen[:, : seq.shape[1]], seq[:, : gen.shape[1]])
    beams = model.generate(**x, max_new_tokens=3, num_beams=2, use_cache=False, decoder_start_token_id=0)
    assert beams.shape[0] == 2


def test_kv_cache_and_foreign_encoder_states_are_refused() -> None:
    model, make_inputs = build_tiny("t5")
    add_adapter(model, lst())
    x = make_inputs(0)
    out = model(**x, use_cache=True)
    with pytest.raises(LSTStateError, match="use_cache=False"):
        model(**x, past_key_values=out.past_key_values, use_cache=True)
    with pytest.raises(LSTStateError, match="did not produce"):
        model.decoder(input_ids=x["decoder_input_ids"], encoder_hidden_states=torch.randn(2, 7, 32))


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("kwargs,field", [
    ({"reduction_factor": 0}, "reduction_factor"),
    ({"side_layers": []}, "side_layers"),
    ({"side_layers": [1, 1]}, "side_layers"),
    ({"decoder_side_layers": [-1]}, "decoder_side_layers"),
    ({"gate_T": 0.0}, "gate_T"),
    ({"init": "fisher"}, "init"),
    ({"bias_sampling": "yes"}, "bias_sampling"),
])
def test_config_rejects_bad_values(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        LSTConfig(**kwargs)


@pytest.mark.parametrize("name,config,match", [
    ("t5", lst(reduction_factor=3), "reduction_factor=3 must divide"),
    ("t5", lst(side_layers=[2]), r"side_layers=\[2\] names layers \[2\]"),
    ("t5", lst(decoder_side_layers=[5]), "decoder_side_layers"),
    ("toy_mlp", lst(), "no supported transformer stack"),
    ("t5", lst(target_modules=["decoder"]), "expected one encoder stack"),
])
def test_bad_targets_raise_and_leave_model_untouched(name: str, config: LSTConfig, match: str) -> None:
    model, _ = build_tiny(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TargetError, match=match):
        add_adapter(model, config)
    assert not adapter_records(model) and "forward" not in getattr(model, "encoder", model).__dict__
    assert list(model.state_dict()) == list(before)


def test_second_lst_adapter_is_refused() -> None:
    model, _ = build_tiny("bert")
    add_adapter(model, lst())
    with pytest.raises(TargetError, match="already has an LST adapter"):
        add_adapter(model, lst(), "other")


# ------------------------------------------------------------------------------------------------ counts
def lst_t5_count(d: int, d_ff: int, d_kv: int, heads: int, buckets: int, r: int, enc: list[int],
                 dec: list[int]) -> int:
    """Trainable parameters of LST on a T5 encoder-decoder, by hand."""
    ds, fs, inner = d // r, d_ff // r, heads * (d_kv // r)
    attn = 2 * ds * inner + 2 * inner * ds                    # q, k, v, o
    ffn = 2 * ds * fs
    enc_block, dec_block = attn + ffn + 2 * ds, 2 * attn + ffn + 3 * ds
    sampler = d * ds + ds

    def stack(layers: list[int], block: int) -> int:
        rel = buckets * heads if 0 in layers else 0          # block 0 owns the relative attention bias
        return len(layers) * block + rel + (len(layers) + 1) * sampler + len(layers) + ds

    return stack(enc, enc_block) + stack(dec, dec_block) + ds * d + d


def test_t5_base_counts_next_to_reference() -> None:
    """GLUE setting (lst-t5-base, r 8, 9 of 12 layers) and the VL-T5 setting (lst-vl-t5, r 4, every layer, with
    VL-Adapter's trainable visual embedding): vlpet.md Table 2 reports 7.46% for LST on VL-T5-base."""
    from peft_core.zoo_vl import build_vl_model

    model = build_model("t5-base")
    base = count_parameters(model).total
    add_adapter(model, make_config("lst-t5-base"))
    mark_trainable(model)
    glue = count_parameters(model)
    layers = [1, 2, 3, 5, 6, 7, 9, 10, 11]
    assert glue.trainable == lst_t5_count(768, 3072, 64, 12, 32, 8, layers, layers) == 3_877_938
    assert glue.total == base + glue.trainable

    model = build_vl_model("t5-base")
    base = count_parameters(model).total
    add_adapter(model, make_config("lst-vl-t5", modules_to_save=["visual_embedding"]))
    mark_trainable(model)
    vl = count_parameters(model)
    side = lst_t5_count(768, 3072, 64, 12, 32, 4, list(range(12)), list(range(12)))
    visual = 2048 * 768 + 768 + 768 + 5 * 768 + 768 + 768 + 2 * 768
    assert vl.trainable == side + visual and vl.total == base + side
    print(f"\nLST T5-base (GLUE, r 8, 9 layers): {glue.trainable:,} = {glue.percent:.2f}% of the total, "
          f"{glue.percent_of_base:.2f}% of the base model")
    print(f"LST VL-T5-base (r 4, all layers) + visual embedding: {vl.trainable:,} / {vl.total:,} = "
          f"{vl.percent:.2f}% (vlpet.md: 7.46%)")
    assert abs(vl.percent - 7.46) < 0.01
