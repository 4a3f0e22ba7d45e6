"""Batch dicts from per-item dicts (upstream image_caption.py:collate_fn, as dicts of tensors).

    image part   raw:      {"images": Float[B, 3, H, W]}
                 precomp:  {"features": Float[B, K, D] (zero-padded to the longest), "feature_lengths": Long[B]}
    text part    {"input_ids": Long[B, L] (padded with the tokenizer's pad id), "attention_mask": Long[B, L]}
    pairs        image part + text part + "image_index" Long[B] + "caption_index" Long[B]
    images       image part + "image_index"
    captions     text part + "caption_index" + "image_index"

Items carry ``"image"`` (Float[3, H, W]) or ``"features"`` (Float[K, D]), ``"input_ids"`` (Long[L]) and the
integer indices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

Item = Mapping[str, Any]


def _require(items: Sequence[Item], keys: tuple[str, ...], what: str) -> None:
    if not items:
        raise ValueError(f"cannot collate an empty list of {what} items")
    for n, item in enumerate(items):
        missing = [k for k in keys if k not in item]
        if missing:
            raise ValueError(f"{what} item {n} has no {missing}; expected keys {list(keys)} (got {sorted(item)})")


def _indices(items: Sequence[Item], key: str) -> torch.Tensor:
    return torch.tensor([int(item[key]) for item in items], dtype=torch.long)


def image_part(items: Sequence[Item]) -> dict[str, torch.Tensor]:
    """``{"images"}`` (stacked) or ``{"features", "feature_lengths"}`` (zero-padded)."""
    if "image" in items[0]:
        _require(items, ("image",), "image")
        shapes = {tuple(item["image"].shape) for item in items}
        if len(shapes) != 1:
            raise ValueError(f"images of different shapes {sorted(shapes)} in one batch; expected one (3, H, W)")
        return {"images": torch.stack([item["image"] for item in items])}
    _require(items, ("features",), "image")
    feats = [torch.as_tensor(item["features"], dtype=torch.float32) for item in items]
    dims = {f.shape[-1] for f in feats}
    if any(f.ndim != 2 for f in feats) or len(dims) != 1:
        raise ValueError(f"region features of shapes {[tuple(f.shape) for f in feats]}; expected (K, D) with one D")
    lengths = torch.tensor([len(f) for f in feats], dtype=torch.long)
    out = feats[0].new_zeros(len(feats), int(lengths.max()), dims.pop())
    for i, f in enumerate(feats):
        out[i, :len(f)] = f
    return {"features": out, "feature_lengths": lengths}


def text_part(items: Sequence[Item], pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """``input_ids`` padded on the right with ``pad_token_id`` and the matching ``attention_mask``."""
    _require(items, ("input_ids",), "caption")
    seqs = [torch.as_tensor(item["input_ids"], dtype=torch.long) for item in items]
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        input_ids[i, :len(s)] = s
        attention_mask[i, :len(s)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def collate_pairs(items: Sequence[Item], pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """Training pairs: image part + text part + ``image_index`` + ``caption_index``."""
    _require(items, ("input_ids", "image_index", "caption_index"), "pair")
    return {**image_part(items), **text_part(items, pad_token_id), "image_index": _indices(items, "image_index"),
            "caption_index": _indices(items, "caption_index")}


def collate_images(items: Sequence[Item]) -> dict[str, torch.Tensor]:
    """Evaluation images: image part + ``image_index``."""
    _require(items, ("image_index",), "image")
    return {**image_part(items), "image_index": _indices(items, "image_index")}


def collate_captions(items: Sequence[Item], pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """Evaluation captions: text part + ``caption_index`` + ``image_index``."""
    _require(items, ("input_ids", "caption_index", "image_index"), "caption")
    return {**text_part(items, pad_token_id), "caption_index": _indices(items, "caption_index"),
            "image_index": _indices(items, "image_index")}
