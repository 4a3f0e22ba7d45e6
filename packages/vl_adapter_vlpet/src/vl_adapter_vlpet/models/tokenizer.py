"""VL-BART / VL-T5 tokenizers: the backbone's tokenizer with VL-T5's sentinel and visual sentinel tokens.

VL-BART (HenryHZY/VL-PET@7430cad ``src/multitask.py:Trainer.__init__``): the BART tokenizer (50,265 tokens) plus 200
special tokens added in this order::

    <extra_id_99>, ..., <extra_id_0>, <vis_extra_id_99>, ..., <vis_extra_id_0>      -> ids 50265 .. 50464

VL-T5 (ylsung/VL_adapter@545fcbb ``VL-T5/src/tokenization.py:VLT5TokenizerFast``, originally j-min/VL-T5): the T5
tokenizer (32,000 pieces + ``<extra_id_99..0>`` = 32,100) plus ``<vis_extra_id_N>`` at id ``vocab - 1 - N``, i.e.
``<vis_extra_id_99>`` = 32100 ... ``<vis_extra_id_0>`` = 32199 (32,200 tokens). Adding them in descending order gives
exactly those ids. In both models ``<vis_extra_id_k>`` is the last-but-k row of the token table, which the visual
embedding adds to the k-th visual token (object order embedding, ``vocab - 1 - k``).

Tokenizers are read from local folders only (no download): ``model.tokenizer`` or, if unset, ``model.pretrained``.
A folder that already holds the ``<vis_extra_id_*>`` tokens (a saved VL tokenizer, the tiny test tokenizer) is used
as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from vl_adapter_vlpet.models.config import ModelConfig

EXTRA_IDS = 100
VIS_EXTRA_IDS = 100


def extra_id_tokens(n: int = EXTRA_IDS) -> list[str]:
    """``<extra_id_{n-1}>, ..., <extra_id_0>`` (descending, as upstream adds them)."""
    return [f"<extra_id_{i}>" for i in range(n - 1, -1, -1)]


def vis_extra_id_tokens(n: int = VIS_EXTRA_IDS) -> list[str]:
    """``<vis_extra_id_{n-1}>, ..., <vis_extra_id_0>`` (descending: ``<vis_extra_id_0>`` gets the last id)."""
    return [f"<vis_extra_id_{i}>" for i in range(n - 1, -1, -1)]


def vl_special_tokens(family: str, extra_ids: int = EXTRA_IDS, vis_extra_ids: int = VIS_EXTRA_IDS) -> list[str]:
    """The tokens the VL tokenizer adds to the backbone's: BART both sentinel sets, T5 the visual ones only (the T5
    tokenizer already has ``<extra_id_*>``)."""
    if family == "bart":
        return extra_id_tokens(extra_ids) + vis_extra_id_tokens(vis_extra_ids)
    if family == "t5":
        return vis_extra_id_tokens(vis_extra_ids)
    raise ValueError(f"family={family!r} is not allowed; expected 'bart' or 't5'")


def has_vl_tokens(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether ``<vis_extra_id_0>`` is already a token of ``tokenizer``."""
    return "<vis_extra_id_0>" in tokenizer.get_vocab()


def add_vl_tokens(tokenizer: PreTrainedTokenizerBase, family: str) -> int:
    """Add the VL special tokens (see the module docstring) unless present; returns how many were added."""
    if has_vl_tokens(tokenizer):
        return 0
    tokens = vl_special_tokens(family)
    if family == "t5" and "<extra_id_0>" not in tokenizer.get_vocab():
        raise ValueError(f"{type(tokenizer).__name__} has no <extra_id_0>; a VL-T5 tokenizer is built from the T5 "
                         "tokenizer (with its 100 sentinel tokens), expected a t5-base tokenizer folder")
    return tokenizer.add_special_tokens({"additional_special_tokens": tokens}, replace_extra_special_tokens=False)


def vis_token_ids(tokenizer: PreTrainedTokenizerBase, n: int) -> list[int]:
    """Ids of ``<vis_extra_id_0..n-1>`` (upstream ``config.default_obj_order_ids``)."""
    ids = tokenizer.convert_tokens_to_ids([f"<vis_extra_id_{i}>" for i in range(n)])
    if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids:
        raise ValueError(f"the tokenizer has fewer than {n} <vis_extra_id_*> tokens; expected at least {n}")
    return list(ids)


def build_tokenizer(model_cfg: ModelConfig) -> PreTrainedTokenizerBase | None:
    """The VL tokenizer of ``model_cfg`` from ``model.tokenizer`` (or ``model.pretrained``), ``None`` when neither is
    set. Raises ``FileNotFoundError`` naming the key when the folder does not exist."""
    from transformers import AutoTokenizer

    key, source = ("model.tokenizer", model_cfg.tokenizer) if model_cfg.tokenizer else ("model.pretrained",
                                                                                          model_cfg.pretrained)
    if source is None:
        return None
    path = Path(source)
    if not path.is_dir():
        raise FileNotFoundError(f"{key}={source!r}: tokenizer folder not found; expected a local folder with "
                                "tokenizer files (tokenizer.json, or vocab.json + merges.txt for BART, spiece.model "
                                "for T5); nothing is downloaded")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{key}={source!r}: cannot be read as a tokenizer ({type(exc).__name__}: {exc})") from None
    add_vl_tokens(tokenizer, model_cfg.family)
    return tokenizer
