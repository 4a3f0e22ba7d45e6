"""Tiny VL-BART / VL-T5 configurations and tokenizers for tests and the demo (no download, built in milliseconds).

    tok = tiny_tokenizer("bart-base", tmp_path / "tok", texts=["what color is the cube?", "red"])
    cfg = tiny_model_config("bart-base", tokenizer=str(tmp_path / "tok"), feat_dim=16, n_vis_tokens=4)
    bundle = build_model(cfg, MethodConfig(preset="vl-pet-large", overrides=TINY_METHOD_OVERRIDES["vl-pet-large"]))

The tokenizer is a word-level ``tokenizers`` model (lower-cased, split on whitespace and punctuation) whose
vocabulary is a small built-in word list plus every word of ``texts``, with the special tokens of the real VL
tokenizers in the same order and positions (:mod:`vl_adapter_vlpet.models.tokenizer`): VL-BART ``<s> <pad> </s>
<unk>`` first, ``<mask>``, then ``<extra_id_*>`` and ``<vis_extra_id_*>`` descending; VL-T5 ``<pad> </s> <unk>``
first and the sentinels last. Tiny mode reduces the sentinel counts to ``extra_ids`` (10) and ``vis_extra_ids``
(36: one object-order token per visual token of a 6 x 6 grid) instead of 100 each; ``<vis_extra_id_0>`` is still
the last token, so object orders map to the last rows of the token table as in the real models.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vl_adapter_vlpet.models.config import ModelConfig
from vl_adapter_vlpet.models.tokenizer import extra_id_tokens, vis_extra_id_tokens

TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "bart-base": {"d_model": 32, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
                  "decoder_attention_heads": 4, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64,
                  "max_position_embeddings": 128},
    "t5-base": {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_decoder_layers": 2, "num_heads": 4,
                "relative_attention_num_buckets": 8},
}

TINY_METHOD_OVERRIDES: dict[str, dict[str, Any]] = {
    # hidden sizes that fit d_model = 32 (the real presets use 96 / 192, which would exceed it)
    "vl-pet-small": {"r": 8, "gate_dim": 8, "vpa_dim": 8},
    "vl-pet-middlex": {"r": 8, "gate_dim": 8, "vpa_dim": 8},
    "vl-pet-middley": {"r": 8, "gate_dim": 8, "vpa_dim": 8},
    "vl-pet-large": {"r": 8, "gate_dim": 8, "vpa_dim": 8},
    "vl-adapter-glarge-lw": {"r": 8, "gate_dim": 8, "vpa_dim": 8},
    "compacter-glarge-lw": {"r": 8, "gate_dim": 8, "vpa_dim": 8},
    "lora": {"r": 4},
    "prompt-tuning": {"num_virtual_tokens": 3, "mlp_dim": 16},
    "lst": {"reduction_factor": 2},
}
"""``method.overrides`` that make every method fit the tiny configurations (others need none)."""

CORE_WORDS = (
    "vqa", "gqa", "gpa", "nlvr", "caption", ":", "?", ".", ",", "'", "!", "-", "a", "an", "the", "is", "are", "was",
    "were", "be", "of", "in", "on", "at", "to", "with", "and", "or", "not", "no", "yes", "true", "false", "what",
    "which", "who", "where", "when", "how", "many", "much", "color", "colour", "shape", "size", "kind", "type",
    "there", "this", "that", "these", "those", "it", "its", "image", "picture", "photo", "left", "right", "top",
    "bottom", "front", "behind", "next", "near", "one", "two", "three", "four", "five", "six", "seven", "eight",
    "nine", "ten", "zero", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "red", "green", "blue", "yellow",
    "black", "white", "gray", "grey", "brown", "orange", "purple", "pink", "big", "small", "large", "tiny", "cube",
    "sphere", "ball", "cylinder", "box", "square", "circle", "triangle", "object", "objects", "thing", "things",
    "man", "woman", "person", "people", "dog", "cat", "car", "table", "plate", "pizza", "shows", "show", "showing",
    "contains", "contain", "has", "have", "both", "each", "other", "more", "less", "than", "same", "different",
    "number", "count",
)


def tiny_model_config(backbone: str = "bart-base", **kw: Any) -> ModelConfig:
    """A :class:`ModelConfig` with a 2 + 2 layer, d = 32 language model (``config_overrides``; more may be passed
    in ``config_overrides``), no pre-trained weights, and the given fields (``tokenizer``, ``feat_dim``, ...)."""
    overrides = {**TINY_CONFIGS[backbone], **kw.pop("config_overrides", {})}
    return ModelConfig(backbone=backbone, config_overrides=overrides, **kw)


def _words(texts: Iterable[str]) -> list[str]:
    from tokenizers import normalizers, pre_tokenizers

    norm = normalizers.Lowercase()
    split = pre_tokenizers.Whitespace()
    words = set(CORE_WORDS)
    for text in texts:
        words.update(w for w, _ in split.pre_tokenize_str(norm.normalize_str(text)))
    return sorted(words)


def tiny_tokenizer(backbone: str, tmp_dir: str | Path, texts: Iterable[str] = (), extra_ids: int = 10,
                   vis_extra_ids: int = 36) -> Any:
    """Build, save to ``tmp_dir`` and return a tiny VL tokenizer (see the module docstring); the folder can be given
    as ``model.tokenizer``. Every word of ``texts`` is one token."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    family = backbone.split("-")[0]
    words = _words(texts)
    extras = extra_id_tokens(extra_ids)
    vis = vis_extra_id_tokens(vis_extra_ids)
    if family == "bart":
        head, tail = ["<s>", "<pad>", "</s>", "<unk>"], ["<mask>", *extras, *vis]
    elif family == "t5":
        head, tail = ["<pad>", "</s>", "<unk>"], [*extras, *vis]
    else:
        raise ValueError(f"backbone={backbone!r} is not allowed; expected 'bart-base' or 't5-base'")
    vocab = {token: i for i, token in enumerate([*head, *words, *tail])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    eos = vocab["</s>"]
    if family == "bart":
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", vocab["<s>"]),
                                                                                 ("</s>", eos)])
    else:
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                           special_tokens=[("</s>", eos)])
    specials = [*head, *tail]
    tok.add_special_tokens(specials)
    names = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    if family == "bart":
        names.update(bos_token="<s>", mask_token="<mask>")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, additional_special_tokens=[*extras, *vis],
                                   model_max_length=512, **names)
    out = Path(tmp_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    from vl_adapter_vlpet.models.tokenizer import build_tokenizer

    return build_tokenizer(ModelConfig(backbone=backbone, tokenizer=str(out)))


def tiny_batch(tokenizer: Any, questions: list[str] | None = None, answers: list[str] | None = None,
               n_vis_tokens: int = 4, feat_dim: int = 16, task: str = "vqa", seed: int = 0) -> dict[str, Any]:
    """A collated batch in the package's batch format (``input_ids``, ``attention_mask``, ``vis_feats``, ``vis_pos``
    with zero boxes, ``labels`` with -100 at padding, ``task``, ``ids``, ``targets``) with random features."""
    import torch

    questions = questions or ["vqa: what color is the cube?", "vqa: how many balls are there?"]
    answers = answers or ["red", "two"]
    if len(questions) != len(answers):
        raise ValueError(f"{len(questions)} questions but {len(answers)} answers; expected one answer per question")
    enc = tokenizer(questions, padding=True, return_tensors="pt")
    labels = tokenizer(answers, padding=True, return_tensors="pt").input_ids
    labels[labels == tokenizer.pad_token_id] = -100
    g = torch.Generator().manual_seed(seed)
    b = len(questions)
    return {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask,
            "vis_feats": torch.randn(b, n_vis_tokens, feat_dim, generator=g),
            "vis_pos": torch.zeros(b, n_vis_tokens, 4), "labels": labels, "task": task,
            "ids": [str(i) for i in range(b)], "targets": list(answers)}
