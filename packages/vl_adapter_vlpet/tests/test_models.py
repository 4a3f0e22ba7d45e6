"""VL tokenizers (special-token order and ids), VL-BART / VL-T5 construction from configs and local checkpoints, the
visual tokens' position in the encoder input, and configuration errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft_core.runtime.config import ConfigError
from vl_adapter_vlpet.models import (
    MethodConfig,
    ModelConfig,
    build_model,
    build_tokenizer,
    model_inputs,
    vis_token_ids,
)
from vl_adapter_vlpet.models.backbones import BACKBONE_CONFIGS, build_language_model
from vl_adapter_vlpet.models.tokenizer import add_vl_tokens
from vl_adapter_vlpet.testing import TINY_METHOD_OVERRIDES, tiny_batch, tiny_model_config, tiny_tokenizer


def test_vl_bart_tokenizer_adds_200_tokens_in_upstream_order(tmp_path: Path) -> None:
    """multitask.py: <extra_id_99..0> then <vis_extra_id_99..0> appended to BART's vocabulary."""
    tok = tiny_tokenizer("bart-base", tmp_path, extra_ids=0, vis_extra_ids=0)
    n = len(tok)
    base = n - 200
    ids = tok.convert_tokens_to_ids(["<extra_id_99>", "<extra_id_0>", "<vis_extra_id_99>", "<vis_extra_id_0>"])
    assert ids == [base, base + 99, base + 100, base + 199]
    assert vis_token_ids(tok, 3) == [n - 1, n - 2, n - 3]
    assert tok.convert_tokens_to_ids(["<s>", "<pad>", "</s>", "<unk>"]) == [0, 1, 2, 3]
    assert tok.convert_tokens_to_ids("<mask>") == base - 1
    assert tok("<vis_extra_id_5> red").input_ids == [0, n - 6, tok.convert_tokens_to_ids("red"), 2]
    assert add_vl_tokens(tok, "bart") == 0  # already there: nothing added twice


def test_vl_t5_tokenizer_adds_visual_sentinels_at_the_end(tmp_path: Path) -> None:
    """VLT5Tokenizer: <vis_extra_id_N> = vocab - 1 - N after T5's own <extra_id_*>."""
    tok = tiny_tokenizer("t5-base", tmp_path, extra_ids=100, vis_extra_ids=0)
    n = len(tok)
    assert tok.convert_tokens_to_ids(["<vis_extra_id_0>", "<vis_extra_id_99>", "<extra_id_0>"]) == [n - 1, n - 100,
                                                                                                    n - 101]
    assert tok.convert_tokens_to_ids(["<pad>", "</s>", "<unk>"]) == [0, 1, 2]
    assert tok("red").input_ids == [tok.convert_tokens_to_ids("red"), 1]
    with pytest.raises(ValueError, match="has no <extra_id_0>"):
        tiny_tokenizer("t5-base", tmp_path / "bad", extra_ids=0, vis_extra_ids=0)


def test_tiny_tokenizer_covers_given_texts(tmp_path: Path) -> None:
    tok = tiny_tokenizer("bart-base", tmp_path, texts=["Zebras graze near the fence."])
    ids = tok("zebras graze near the fence.", add_special_tokens=False).input_ids
    assert tok.unk_token_id not in ids and len(ids) == 6
    assert tok.decode(ids) == "zebras graze near the fence."
    assert tok.convert_tokens_to_ids("<vis_extra_id_0>") == len(tok) - 1
    assert tok.convert_tokens_to_ids("<vis_extra_id_35>") == len(tok) - 36


@pytest.mark.parametrize("backbone", ["bart-base", "t5-base"])
def test_model_vocab_and_special_ids_follow_the_tokenizer(tmp_path: Path, backbone: str) -> None:
    tok = tiny_tokenizer(backbone, tmp_path)
    bundle = build_model(tiny_model_config(backbone, tokenizer=str(tmp_path), feat_dim=16, n_vis_tokens=4),
                         MethodConfig(preset="vl-pet-large", overrides=TINY_METHOD_OVERRIDES["vl-pet-large"]))
    lm = bundle.model.model
    assert lm.get_input_embeddings().weight.shape[0] == len(tok) == lm.config.vocab_size
    assert lm.config.pad_token_id == tok.pad_token_id and lm.config.eos_token_id == tok.eos_token_id
    start = tok.eos_token_id if backbone == "bart-base" else tok.pad_token_id
    assert lm.config.decoder_start_token_id == start == lm.generation_config.decoder_start_token_id
    assert bundle.model.visual_embedding.feat_embedding[0].in_features == 16
    assert bundle.generation_kwargs == {"num_beams": 5, "max_length": 20}
    assert bundle.tokenizer is not None and len(bundle.tokenizer) == len(tok)


def test_without_tokenizer_the_vocabulary_is_the_vl_one() -> None:
    lm = build_language_model(tiny_model_config("t5-base"))
    assert lm.config.vocab_size == 32200 and lm.get_input_embeddings().weight.shape[0] == 32200
    assert BACKBONE_CONFIGS["bart-base"]["d_model"] == 768 and BACKBONE_CONFIGS["t5-base"]["num_layers"] == 12


def test_local_pretrained_checkpoint_loads_and_resizes(tmp_path: Path) -> None:
    """A saved transformers folder is read with from_pretrained (no download); the vocabulary grows to the VL
    tokenizer's and the existing rows keep their values."""
    tok = tiny_tokenizer("bart-base", tmp_path / "tok")
    small = {**BACKBONE_CONFIGS["bart-base"], **tiny_model_config("bart-base").config_overrides, "vocab_size": 120}
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(0)
    saved = BartForConditionalGeneration(BartConfig(**small))
    saved.save_pretrained(tmp_path / "ckpt")
    cfg = ModelConfig(backbone="bart-base", pretrained=str(tmp_path / "ckpt"), tokenizer=str(tmp_path / "tok"),
                      feat_dim=16, n_vis_tokens=4)
    bundle = build_model(cfg, MethodConfig(preset="full-finetune"), dropout=0.0)
    lm = bundle.model.model
    assert lm.config.vocab_size == len(tok) > 120 and lm.config.dropout == 0.0
    torch.testing.assert_close(lm.get_input_embeddings().weight[:120], saved.get_input_embeddings().weight,
                               rtol=0, atol=0)
    torch.testing.assert_close(lm.model.encoder.layers[0].fc1.weight, saved.model.encoder.layers[0].fc1.weight,
                               rtol=0, atol=0)
    assert lm.final_logits_bias.shape == (1, len(tok))
    logits = bundle.model(**model_inputs(tiny_batch(tok))).logits
    assert logits.shape[-1] == len(tok) and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match=r"is a 'bart' checkpoint; model\.backbone='t5-base'"):
        build_language_model(ModelConfig(backbone="t5-base", pretrained=str(tmp_path / "ckpt")))


def test_missing_local_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"model.tokenizer='.*nope': tokenizer folder not found"):
        build_tokenizer(ModelConfig(tokenizer=str(tmp_path / "nope")))
    with pytest.raises(FileNotFoundError, match=r"model.pretrained='.*': no config.json there"):
        build_language_model(ModelConfig(pretrained=str(tmp_path)))
    assert build_tokenizer(ModelConfig()) is None


@pytest.mark.parametrize("field,value,match", [
    ("backbone", "vit-b", "model.backbone='vit-b' is not allowed"),
    ("n_vis_tokens", 35, "expected a square number"),
    ("feat_dim", 0, "model.feat_dim=0 is not allowed"),
    ("config_overrides", {"model_type": "t5"}, "model_type is not allowed"),
])
def test_model_config_errors(field: str, value: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ModelConfig(**{field: value})


@pytest.mark.parametrize("backbone", ["bart-base", "t5-base"])
def test_visual_tokens_stay_last_behind_input_prompts(tmp_path: Path, backbone: str) -> None:
    """With prompt tuning the encoder input is [prompts; text; visual]: the last V rows are the visual embedding
    (BART: no position embedding, no embedding LayerNorm), and the encoder output covers all three."""
    tok = tiny_tokenizer(backbone, tmp_path)
    bundle = build_model(tiny_model_config(backbone, tokenizer=str(tmp_path), feat_dim=16, n_vis_tokens=4),
                         MethodConfig(preset="prompt-tuning", overrides=TINY_METHOD_OVERRIDES["prompt-tuning"]),
                         dropout=0.0)
    model = bundle.model.eval()
    inputs = model_inputs(tiny_batch(tok), labels=False)
    seen: dict[str, torch.Tensor] = {}
    encoder = model.get_encoder()
    first = encoder.layers[0] if backbone == "bart-base" else encoder.block[0]

    def capture(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        seen["h"] = args[0] if args else kwargs["hidden_states"]

    handle = first.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        with torch.no_grad():
            out, mask = model.encode(**inputs)
            vis = model.visual_embedding(inputs["vis_feats"], inputs["vis_pos"],
                                         obj_order_embedding=model.get_input_embeddings())
    finally:
        handle.remove()
    length = 3 + inputs["input_ids"].shape[1] + 4
    assert out.last_hidden_state.shape[1] == length == seen["h"].shape[1]
    torch.testing.assert_close(seen["h"][:, -4:], vis, rtol=0, atol=0)
    assert mask.shape[1] == length - 3  # the decoder's cross-attention mask gets the prompts from peft_core
    gen = model.generate(**inputs, num_beams=2, max_length=4)
    assert gen.shape[0] == 2
