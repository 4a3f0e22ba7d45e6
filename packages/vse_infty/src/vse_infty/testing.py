"""Tiny configurations for tests and smoke runs: no download, random weights, seconds on a CPU.

* image tower: timm's ResNeXt (``resnext101_32x8d`` builder) with one Bottleneck per stage, stem 8 and stage
  outputs 32 / 64 / 128 / 256 (ResNeXt-101 32x8d: 256 / 512 / 1024 / 2048), cardinality 2;
* text tower: a 2-layer BERT of width 32 over :data:`TINY_VOCAB`;
* joint embedding 32 (UniPT side width 16), GPO width 8, 64 px images.

:func:`tiny_tokenizer` writes a WordPiece vocabulary that covers any lower-case ASCII caption (whole common words,
and every letter / digit as a word start and as a ``##`` continuation).
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vse_infty.model.config import MethodConfig, ModelConfig

TINY_BACKBONE = "resnext101_32x8d"
TINY_BACKBONE_KWARGS: dict[str, Any] = {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], "stem_width": 8,
                                        "cardinality": 2, "base_width": 32}
TINY_CHANNELS = [32, 64, 128, 256]
TINY_EMBED = 32
TINY_INPUT = 64
TINY_IMG_DIM = 16
TINY_REGIONS = 6

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_WORD_LIST = (
    "a an the of in on at with and to is are two three one some man woman men women boy girl child children people "
    "person dog dogs cat cats bird horse ball car bike street road water grass field tree beach snow park table "
    "red blue green black white yellow brown small large big young old sitting standing walking running playing "
    "riding holding looking wearing eating shirt hat front next near while his her their its group"
)
WORDS = _WORD_LIST.split()
CHARS = list(string.ascii_lowercase + string.digits + string.punctuation)
TINY_VOCAB: list[str] = SPECIAL_TOKENS + WORDS + [c for c in CHARS if c not in WORDS] + [f"##{c}" for c in CHARS]
"""WordPiece vocabulary of :func:`tiny_tokenizer`; ids: ``[PAD]`` 0, ``[UNK]`` 1, ``[CLS]`` 2, ``[SEP]`` 3."""
PAD_ID, UNK_ID, CLS_ID, SEP_ID = 0, 1, 2, 3

TINY_TEXT_CONFIG: dict[str, Any] = {
    "model_type": "bert",
    "vocab_size": len(TINY_VOCAB),
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
    "pad_token_id": PAD_ID,
}


def tiny_model_config(image_source: str = "backbone", **kw: Any) -> ModelConfig:
    """A :class:`ModelConfig` of the tiny towers above; ``kw`` overrides any field."""
    base: dict[str, Any] = dict(
        image_source=image_source,
        backbone=TINY_BACKBONE,
        backbone_kwargs=dict(TINY_BACKBONE_KWARGS),
        input_size=TINY_INPUT,
        img_dim=TINY_IMG_DIM,
        text_config=dict(TINY_TEXT_CONFIG),
        embed_size=TINY_EMBED,
        gpo_dim=8,
    )
    base.update(kw)
    return ModelConfig(**base)


def tiny_method_config(name: str, **kw: Any) -> MethodConfig:
    """A :class:`MethodConfig` for the tiny towers (the method defaults fit them as they are)."""
    return MethodConfig(name=name, **kw)


def tiny_tokenizer(tmp_dir: str | Path):
    """A BERT WordPiece tokenizer over :data:`TINY_VOCAB`, saved in ``tmp_dir`` (so ``model.tokenizer=tmp_dir``
    loads it again) and returned."""
    from transformers import BertTokenizer

    tmp_dir = Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    vocab = tmp_dir / "vocab.txt"
    vocab.write_text("\n".join(TINY_VOCAB) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(vocab=str(vocab), do_lower_case=True, model_max_length=TINY_TEXT_CONFIG[
        "max_position_embeddings"])
    tokenizer.save_pretrained(str(tmp_dir))
    return tokenizer


def random_batch(model_cfg: ModelConfig, batch_size: int = 2, seq_len: int = 8, seed: int = 0,
                 vocab_size: int | None = None, regions: int = TINY_REGIONS) -> dict[str, Tensor]:
    """A training pair batch of random inputs in the batch contract (images or precomputed features, right-padded
    ``[CLS] .. [SEP]`` token ids of lengths 3..``seq_len``, ``image_index`` / ``caption_index``)."""
    gen = torch.Generator().manual_seed(seed)
    batch: dict[str, Tensor] = {}
    if model_cfg.image_source == "precomp":
        batch["features"] = torch.randn(batch_size, regions, model_cfg.img_dim, generator=gen)
        batch["feature_lengths"] = torch.randint(1, regions + 1, (batch_size,), generator=gen)
        batch["feature_lengths"][0] = regions
    else:
        size = model_cfg.input_size
        batch["images"] = torch.randn(batch_size, 3, size, size, generator=gen)
    vocab = vocab_size or int((model_cfg.text_config or {}).get("vocab_size", 30522))
    lengths = torch.randint(3, seq_len + 1, (batch_size,), generator=gen)
    lengths[0] = seq_len
    ids = torch.randint(len(SPECIAL_TOKENS), vocab, (batch_size, seq_len), generator=gen)
    positions = torch.arange(seq_len).expand(batch_size, seq_len)
    ids[:, 0] = CLS_ID
    ids[positions == (lengths - 1).unsqueeze(1)] = SEP_ID
    mask = positions < lengths.unsqueeze(1)
    batch["input_ids"] = ids.masked_fill(~mask, PAD_ID)
    batch["attention_mask"] = mask.long()
    batch["image_index"] = torch.arange(batch_size)
    batch["caption_index"] = torch.arange(batch_size)
    return batch
