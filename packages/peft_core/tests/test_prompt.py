"""Input prompt tuning (CPU, tiny models built from configs; eager and sdpa)."""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import peft_core.tuners.prompt.model  # noqa: F401  (registers the method and preset)
import pytest
import torch
from common import Case, PetlCommonTests
from peft_core import (
    adapter_parameters,
    add_adapter,
    disable_adapters,
    iter_layers,
    load_adapter,
    make_config,
    mark_trainable,
    remove_adapters,
    save_adapter,
)
from peft_core.targeting import TargetError
from peft_core.testing import build_tiny, output_tensor
from peft_core.tuners.prompt import PromptConfig, PromptCrossMaskLayer, PromptLayer
from torch import nn

IMPLS = ["eager", "sdpa"]
L = 3


def tiny(family: str, impl: str, seed: int = 0) -> tuple[nn.Module, Any]:
    model, inputs = build_tiny(family, seed)
    if impl != "eager":
        model.set_attn_implementation(impl)
    return model, inputs


def perturb_all(model: nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter_parameters(model).values():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def encoder_of(family: str, model: nn.Module) -> nn.Module:
    return model if family == "bert" else model.get_encoder()


def capture_kwargs(module: nn.Module, store: list) -> None:
    """A pre-hook registered after the prompt hook: it sees the rewritten call."""
    module.register_forward_pre_hook(lambda m, a, kw: store.append(kw), with_kwargs=True)


# ------------------------------------------------------------------------------ length, masks, decoder untouched
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("family", ["bart", "t5"])
def test_encoder_decoder_lengths_and_masks(family: str, impl: str) -> None:
    model, make_inputs = tiny(family, impl)
    inputs = make_inputs(0)
    rec = add_adapter(model, PromptConfig(num_virtual_tokens=L))
    enc, dec = model.get_encoder(), model.get_decoder()
    assert [model.get_submodule(h) for h in rec.hosts] == [enc, dec]
    assert isinstance(enc.petl["default"], PromptLayer) and isinstance(dec.petl["default"], PromptCrossMaskLayer)
    enc_calls, dec_calls = [], []
    capture_kwargs(enc, enc_calls)
    capture_kwargs(dec, dec_calls)
    out = model(**inputs)
    batch, length = inputs["input_ids"].shape
    assert out.encoder_last_hidden_state.shape[:2] == (batch, length + L)
    assert out.logits.shape[:2] == inputs["decoder_input_ids"].shape
    mask = inputs["attention_mask"]
    extended = torch.cat([torch.ones(batch, L, dtype=mask.dtype), mask], dim=1)
    assert torch.equal(enc_calls[0]["attention_mask"], extended)
    assert enc_calls[0].get("input_ids") is None and enc_calls[0]["inputs_embeds"].shape[1] == length + L
    assert torch.equal(dec_calls[0]["encoder_attention_mask"], extended)
    assert torch.equal(dec_calls[0]["input_ids"], inputs["decoder_input_ids"])  # decoder inputs left alone


def test_encoder_only_lengths() -> None:
    model, make_inputs = tiny("bert", "sdpa")
    inputs = make_inputs(0)
    rec = add_adapter(model, PromptConfig(num_virtual_tokens=L))
    assert rec.hosts == [""]
    out = model(**inputs)
    assert out.last_hidden_state.shape[:2] == (2, 7 + L)


# ------------------------------------------------------------------------------ formulas
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("family", ["bert", "bart", "t5"])
def test_shift_positions_equal_prepended_inputs_embeds(family: str, impl: str) -> None:
    """positions='shift': the model with prompts == the base model fed [P; E(ids)] and [1; mask]."""
    model, make_inputs = tiny(family, impl)
    inputs = make_inputs(0)
    add_adapter(model, PromptConfig(num_virtual_tokens=L))
    perturb_all(model)
    got = output_tensor(model(**inputs))
    encoder = encoder_of(family, model)
    prompts = encoder.petl["default"].prompt
    with disable_adapters(model), torch.no_grad():
        embeds = torch.cat([prompts.expand(2, -1, -1), encoder.get_input_embeddings()(inputs["input_ids"])], dim=1)
        mask = torch.cat([torch.ones(2, L, dtype=torch.long), inputs["attention_mask"]], dim=1)
        ref_inputs = {**inputs, "input_ids": None, "inputs_embeds": embeds, "attention_mask": mask}
        ref = output_tensor(model(**ref_inputs))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def _additive(mask: torch.Tensor) -> torch.Tensor:
    return torch.zeros(mask.shape[0], 1, 1, mask.shape[1]).masked_fill(mask[:, None, None, :] == 0,
                                                                        torch.finfo(torch.float32).min)


@pytest.mark.parametrize("impl", IMPLS)
def test_bart_positions_none_matches_vl_bart(impl: str) -> None:
    """VL-BART: x = [P ; E(ids) * scale + pos(0..S-1)], then layernorm_embedding and the layers (prompts get no
    position embedding), computed here by hand."""
    model, make_inputs = tiny("bart", impl)
    inputs = make_inputs(0)
    add_adapter(model, make_config("prompt-vl-adapter", num_virtual_tokens=L, mlp_dim=16))
    perturb_all(model)
    enc = model.get_encoder()
    got = enc(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
    layer = enc.petl["default"]
    with torch.no_grad():
        mlp = layer.mlp
        prompts = mlp.proj_out(torch.tanh(mlp.proj_in(mlp.embedding.weight)))
        torch.testing.assert_close(layer.prompts(), prompts)
        ids = inputs["input_ids"]
        text = enc.embed_tokens(ids) + enc.embed_positions.weight[2 : 2 + ids.shape[1]]  # BART offset 2
        hidden = enc.layernorm_embedding(torch.cat([prompts.expand(2, -1, -1), text], dim=1))
        mask = _additive(torch.cat([torch.ones(2, L, dtype=torch.long), inputs["attention_mask"]], dim=1))
        with disable_adapters(model):
            for block in enc.layers:
                hidden = block(hidden, mask)
    torch.testing.assert_close(got, hidden, rtol=1e-5, atol=1e-5)


def test_bert_positions_none_and_explicit_ids() -> None:
    """BERT, positions='none': prompts get token type 0 and no position embedding; text keeps positions 0..S-1.
    Passing explicit position_ids / token_type_ids gives the same result (both position modes)."""
    model, make_inputs = tiny("bert", "eager")
    inputs = make_inputs(0)
    add_adapter(model, PromptConfig(num_virtual_tokens=L, positions="none"))
    perturb_all(model)
    got = model(**inputs).last_hidden_state
    emb = model.embeddings
    with torch.no_grad(), disable_adapters(model):
        ids = inputs["input_ids"]
        prompts = model.petl["default"].prompt.expand(2, -1, -1)
        text = emb.word_embeddings(ids) + emb.position_embeddings.weight[: ids.shape[1]]
        hidden = torch.cat([prompts, text], dim=1) + emb.token_type_embeddings.weight[0]
        hidden = emb.LayerNorm(hidden)
        mask = _additive(torch.cat([torch.ones(2, L, dtype=torch.long), inputs["attention_mask"]], dim=1))
        ref = model.encoder(hidden, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    explicit = {**inputs, "position_ids": torch.arange(7)[None], "token_type_ids": torch.zeros(2, 7, dtype=torch.long)}
    torch.testing.assert_close(model(**explicit).last_hidden_state, got, rtol=1e-6, atol=1e-6)
    shift, _ = tiny("bert", "eager")
    add_adapter(shift, PromptConfig(num_virtual_tokens=L))
    torch.testing.assert_close(shift(**explicit).last_hidden_state, shift(**inputs).last_hidden_state, rtol=1e-6,
                               atol=1e-6)


def test_vocab_init_copies_token_embeddings() -> None:
    model, _ = tiny("bert", "eager")
    add_adapter(model, PromptConfig(num_virtual_tokens=4, init="vocab"))
    prompt = model.petl["default"].prompt
    table = model.get_input_embeddings().weight
    for row in prompt:
        assert any(torch.equal(row, t) for t in table)


# ------------------------------------------------------------------------------ generate
@pytest.mark.parametrize("family", ["bart", "t5"])
def test_generate_with_prompts_matches_greedy_full_forward(family: str) -> None:
    model, make_inputs = tiny(family, "sdpa")
    model.generation_config.eos_token_id = None
    model.generation_config.forced_eos_token_id = None
    model.generation_config.decoder_start_token_id = 0
    add_adapter(model, make_config("prompt-vl-adapter", num_virtual_tokens=L, mlp_dim=16))
    perturb_all(model)
    inputs = make_inputs(0)
    steps = 4
    out = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                         max_new_tokens=steps, min_new_tokens=steps, do_sample=False, num_beams=1)
    assert out.shape == (2, steps + 1)
    seq = out[:, :1]
    for _ in range(steps):
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], decoder_input_ids=seq,
                       use_cache=False).logits
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)
    with disable_adapters(model):
        plain = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                               max_new_tokens=steps, min_new_tokens=steps, do_sample=False, num_beams=1)
    assert plain.shape == out.shape


# ------------------------------------------------------------------------------ padding invariance
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("family", ["bert", "bart", "t5"])
def test_padding_invariance(family: str, impl: str) -> None:
    model, make_inputs = tiny(family, impl)
    add_adapter(model, PromptConfig(num_virtual_tokens=L, reparameterization="mlp", mlp_dim=8))
    inputs = make_inputs(0)
    keep = int(inputs["attention_mask"][1].sum())
    alone = {k: (v[1:2, :keep] if k in ("input_ids", "attention_mask") else v[1:2]) for k, v in inputs.items()}
    padded_out, alone_out = model(**inputs), model(**alone)
    if family == "bert":
        torch.testing.assert_close(padded_out.last_hidden_state[1:2, : L + keep], alone_out.last_hidden_state,
                                   rtol=1e-4, atol=1e-5)
    else:
        torch.testing.assert_close(padded_out.logits[1:2], alone_out.logits, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(padded_out.encoder_last_hidden_state[1:2, : L + keep],
                                   alone_out.encoder_last_hidden_state, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------ training, checkpoints, removal
@pytest.mark.parametrize(("family", "impl"), [("bert", "sdpa"), ("bart", "eager"), ("t5", "sdpa")])
def test_gradients_only_on_prompts_and_base_unchanged(family: str, impl: str) -> None:
    model, make_inputs = tiny(family, impl)
    add_adapter(model, make_config("prompt-vl-adapter", num_virtual_tokens=L, mlp_dim=16))
    mark_trainable(model)
    own = {id(p) for p in adapter_parameters(model).values()}
    assert len(own) == 5  # embedding, 2 x (weight, bias)
    base = {k: v.clone() for k, v in model.state_dict().items() if not (k.startswith("petl.") or ".petl." in k)}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    output_tensor(model(**make_inputs(0))).pow(2).mean().backward()
    for name, p in model.named_parameters():
        if id(p) in own:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None and not p.requires_grad, name
    opt.step()
    for k, v in base.items():
        assert torch.equal(model.state_dict()[k], v), k


@pytest.mark.parametrize(("family", "impl", "kw"), [
    ("bert", "eager", {}), ("bart", "sdpa", {"reparameterization": "mlp", "mlp_dim": 8}),
    ("t5", "eager", {"init": "vocab"})])
def test_save_load_round_trip(family: str, impl: str, kw: dict, tmp_path: Any) -> None:
    model, make_inputs = tiny(family, impl)
    add_adapter(model, PromptConfig(num_virtual_tokens=L, **kw))
    perturb_all(model)
    inputs = make_inputs(2)
    expected = output_tensor(model(**inputs)).detach()
    save_adapter(model, tmp_path)
    fresh, _ = tiny(family, impl)
    load_adapter(fresh, tmp_path)
    assert torch.equal(output_tensor(fresh(**inputs)), expected)


@pytest.mark.parametrize(("family", "impl"), [("bert", "eager"), ("bart", "sdpa"), ("t5", "eager")])
def test_disable_and_remove_restore_base(family: str, impl: str) -> None:
    model, make_inputs = tiny(family, impl)
    inputs = make_inputs(1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    base = output_tensor(model(**inputs)).detach()
    add_adapter(model, make_config("prompt-vl-adapter", num_virtual_tokens=L, mlp_dim=16))
    with disable_adapters(model):
        assert torch.equal(output_tensor(model(**inputs)), base)
    remove_adapters(model)
    assert list(model.state_dict()) == list(state)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert torch.equal(output_tensor(model(**inputs)), base)
    assert not list(iter_layers(model))
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


def test_deepcopy_is_independent() -> None:
    model, make_inputs = tiny("bart", "sdpa")
    inputs = make_inputs(0)
    base = output_tensor(model(**inputs)).detach()
    add_adapter(model, make_config("prompt-vl-adapter", num_virtual_tokens=L, mlp_dim=16))
    out = output_tensor(model(**inputs)).detach()
    clone = copy.deepcopy(model)
    assert torch.equal(output_tensor(clone(**inputs)), out)
    remove_adapters(clone)
    assert torch.equal(output_tensor(clone(**inputs)), base)
    assert torch.equal(output_tensor(model(**inputs)), out)


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(("kwargs", "field"), [
    ({"num_virtual_tokens": 0}, "num_virtual_tokens"),
    ({"num_virtual_tokens": True}, "num_virtual_tokens"),
    ({"reparameterization": "lstm"}, "reparameterization"),
    ({"mlp_dim": 0}, "mlp_dim"),
    ({"activation": "gelu"}, "activation"),
    ({"init": "zeros"}, "init"),
    ({"positions": "absolute"}, "positions"),
    ({"init": "vocab", "reparameterization": "mlp"}, "init"),
])
def test_config_errors_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        PromptConfig(**kwargs)


class NoPositions(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(10, 4)

    def get_input_embeddings(self) -> nn.Module:
        return self.embed_tokens

    def forward(self, input_ids: Any = None, inputs_embeds: Any = None, attention_mask: Any = None) -> Any:
        return inputs_embeds if inputs_embeds is not None else self.embed_tokens(input_ids)


def test_unsupported_hosts_and_calls() -> None:
    clip, _ = tiny("clip", "eager")
    with pytest.raises(TargetError, match="inputs_embeds"):
        add_adapter(clip, PromptConfig())
    from transformers import BertConfig, BertLMHeadModel

    decoder = BertLMHeadModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=32, is_decoder=True))
    with pytest.raises(TargetError, match="is_decoder"):
        add_adapter(decoder, PromptConfig())
    with pytest.raises(TargetError, match="positions='none'"):
        add_adapter(nn.Sequential(NoPositions()), PromptConfig(target_modules=["0"], positions="none"))
    toy = nn.Sequential(NoPositions())
    add_adapter(toy, PromptConfig(target_modules=["0"], num_virtual_tokens=2))
    assert toy(torch.tensor([[1, 2, 3]])).shape == (1, 5, 4)
    with pytest.raises(ValueError, match="needs input_ids or inputs_embeds"):
        toy[0](attention_mask=torch.ones(1, 3))

    model, make_inputs = tiny("bert", "eager")
    add_adapter(model, PromptConfig(num_virtual_tokens=L))
    inputs = make_inputs(0)
    with pytest.raises(ValueError, match="expected a \\(batch, length\\) padding mask"):
        model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"][:, None, None, :])
    add_adapter(model, PromptConfig(num_virtual_tokens=2), "second")
    with pytest.raises(RuntimeError, match="only one input-prompt adapter may be active"):
        model(**inputs)


def test_preset() -> None:
    cfg = make_config("prompt-vl-adapter")
    assert (cfg.num_virtual_tokens, cfg.reparameterization, cfg.mlp_dim, cfg.activation, cfg.positions) == (
        40, "mlp", 800, "tanh", "none")
    model, make_inputs = tiny("t5", "eager")
    add_adapter(model, cfg)
    layer = model.get_encoder().petl["default"]
    assert tuple(layer.mlp.embedding.weight.shape) == (40, 32)
    assert (layer.mlp.proj_in.out_features, layer.mlp.proj_out.out_features) == (800, 32)
    assert model(**make_inputs(0)).encoder_last_hidden_state.shape[1] == 47


# ------------------------------------------------------------------------------ shared property suite
class TestPromptCommon(PetlCommonTests):
    # encoder-decoder models only: the suite compares outputs before/after, and an encoder-only model's output is L
    # positions longer with prompts
    CASES: ClassVar[list[Case]] = [
        Case("bart", "prompt-vl-adapter", (("num_virtual_tokens", 3), ("mlp_dim", 16)), identity=False),
        Case("t5", "prompt", (("num_virtual_tokens", 3), ("reparameterization", "mlp"), ("mlp_dim", 8)),
             identity=False),
    ]
