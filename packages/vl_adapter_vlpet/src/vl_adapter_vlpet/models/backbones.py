"""The language models of VL-BART / VL-T5: stock transformers ``BartForConditionalGeneration`` /
``T5ForConditionalGeneration`` from a local checkpoint folder, or from the backbone's configuration with random
weights.

``BACKBONE_CONFIGS`` are the architecture fields of ``facebook/bart-base`` and ``t5-base`` (their ``config.json``);
``model.config_overrides`` replaces fields (tiny sizes in tests). The vocabulary is the VL tokenizer's: 50,465
(VL-BART) / 32,200 (VL-T5) without a tokenizer (``peft_core.zoo_vl.VL_BART_VOCAB`` / ``VL_T5_VOCAB``), else
``len(tokenizer)``; a pre-trained checkpoint is resized to it (upstream ``resize_token_embeddings``; the new rows are
initialised by the model's ``_init_weights`` as in transformers 4.2.1, not by mean resizing).

Dropout: upstream ``create_config`` sets ``dropout``, ``attention_dropout`` and ``activation_dropout`` (BART) /
``dropout_rate`` (T5) to ``--dropout`` (0.1): :func:`dropout_fields`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peft_core.zoo_vl import VL_BART_VOCAB, VL_T5_VOCAB

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from vl_adapter_vlpet.models.config import ModelConfig

BACKBONE_CONFIGS: dict[str, dict[str, Any]] = {
    "bart-base": {  # facebook/bart-base config.json (architecture and special ids)
        "vocab_size": 50265, "d_model": 768, "encoder_layers": 6, "decoder_layers": 6, "encoder_attention_heads": 12,
        "decoder_attention_heads": 12, "encoder_ffn_dim": 3072, "decoder_ffn_dim": 3072,
        "max_position_embeddings": 1024, "activation_function": "gelu", "dropout": 0.1, "attention_dropout": 0.1,
        "activation_dropout": 0.1, "init_std": 0.02, "scale_embedding": False, "bos_token_id": 0, "pad_token_id": 1,
        "eos_token_id": 2, "decoder_start_token_id": 2, "forced_eos_token_id": 2,
    },
    "t5-base": {  # t5-base config.json
        "vocab_size": 32128, "d_model": 768, "d_kv": 64, "d_ff": 3072, "num_layers": 12, "num_decoder_layers": 12,
        "num_heads": 12, "relative_attention_num_buckets": 32, "dropout_rate": 0.1, "layer_norm_epsilon": 1e-6,
        "feed_forward_proj": "relu", "initializer_factor": 1.0, "tie_word_embeddings": True, "pad_token_id": 0,
        "eos_token_id": 1, "decoder_start_token_id": 0,
    },
}
VL_VOCAB = {"bart-base": VL_BART_VOCAB, "t5-base": VL_T5_VOCAB}


def dropout_fields(family: str, p: float) -> dict[str, float]:
    """The config fields upstream's ``--dropout`` sets."""
    if family == "bart":
        return {"dropout": p, "attention_dropout": p, "activation_dropout": p}
    return {"dropout_rate": p}


def _classes(family: str) -> tuple[type, type]:
    from transformers import BartConfig, BartForConditionalGeneration, T5Config, T5ForConditionalGeneration

    return (BartConfig, BartForConditionalGeneration) if family == "bart" else (T5Config, T5ForConditionalGeneration)


def special_ids(tokenizer: PreTrainedTokenizerBase, family: str) -> dict[str, int]:
    """``pad / eos / bos / decoder_start`` ids taken from the tokenizer (BART starts decoding with ``</s>``, T5 with
    ``<pad>``)."""
    ids = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    missing = [k for k, v in ids.items() if v is None]
    if missing:
        raise ValueError(f"the tokenizer has no {missing}; expected a BART or T5 tokenizer with pad and eos tokens")
    if family == "bart":
        if tokenizer.bos_token_id is None:
            raise ValueError("the tokenizer has no bos_token_id; expected a BART tokenizer (<s>)")
        ids.update(bos_token_id=tokenizer.bos_token_id, decoder_start_token_id=tokenizer.eos_token_id,
                   forced_eos_token_id=tokenizer.eos_token_id)
    else:
        ids["decoder_start_token_id"] = tokenizer.pad_token_id
    return ids


def target_vocab(model_cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase | None) -> int:
    """The VL vocabulary size: the tokenizer's, else ``config_overrides.vocab_size``, else VL-BART's / VL-T5's."""
    if tokenizer is not None:
        return len(tokenizer)
    return int(model_cfg.config_overrides.get("vocab_size", VL_VOCAB[model_cfg.backbone]))


def build_language_model(model_cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase | None = None,
                         dropout: float | None = None) -> PreTrainedModel:
    """The transformers seq2seq model of ``model_cfg`` with the VL vocabulary (see the module docstring)."""
    config_cls, model_cls = _classes(model_cfg.family)
    vocab = target_vocab(model_cfg, tokenizer)
    extra = dropout_fields(model_cfg.family, dropout) if dropout is not None else {}
    if model_cfg.pretrained is not None:
        path = Path(model_cfg.pretrained)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model.pretrained={model_cfg.pretrained!r}: no config.json there; expected a "
                                    f"local transformers checkpoint folder of {model_cfg.backbone}")
        try:
            model_type = json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError) as exc:
            raise ValueError(f"model.pretrained={model_cfg.pretrained!r}: config.json is not readable JSON "
                             f"({exc})") from None
        if model_type != model_cfg.family:
            raise ValueError(f"model.pretrained={model_cfg.pretrained!r} is a {model_type!r} checkpoint; "
                             f"model.backbone={model_cfg.backbone!r} expects model_type {model_cfg.family!r}")
        config = config_cls.from_pretrained(str(path), local_files_only=True,
                                            **{**model_cfg.config_overrides, **extra})
        lm = model_cls.from_pretrained(str(path), config=config, local_files_only=True)
        if lm.get_input_embeddings().weight.shape[0] != vocab:
            lm.resize_token_embeddings(vocab, mean_resizing=False)
    else:
        fields = {**BACKBONE_CONFIGS[model_cfg.backbone], **model_cfg.config_overrides, **extra}
        if tokenizer is not None:
            fields.update(special_ids(tokenizer, model_cfg.family))
        fields["vocab_size"] = vocab
        lm = model_cls(config_cls(**fields))
    for key in ("pad_token_id", "eos_token_id", "bos_token_id", "decoder_start_token_id"):
        value = getattr(lm.config, key, None)
        if value is not None:
            setattr(lm.generation_config, key, value)
    return lm
