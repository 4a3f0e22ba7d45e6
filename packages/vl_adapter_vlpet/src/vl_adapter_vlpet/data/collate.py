"""Batching of one task's items into the batch dict every model / engine function takes.

    input_ids      Long[B, L]     padded with the tokenizer's pad id
    attention_mask Long[B, L]     1 on text tokens, 0 on padding
    vis_feats      Float[B, V, F]
    vis_pos        Float[B, V, 4] zeros for grid / frame features
    img_order_ids  Long[B, V]     only when the items have them (NLVR2)
    obj_order_ids  Long[B, V]     only when the items have them (NLVR2)
    labels         Long[B, T]     training targets, -100 at padding (upstream ``target_ids[~word_mask] = -100``);
                                  present only when every item has a target
    scores         Float[B]       VQA only: soft score of each sampled answer (upstream weights the loss by it)
    task           str            one task per batch
    ids            list[str]
    targets        list           the evaluation references of the items
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vl_adapter_vlpet.data.errors import DataFormatError


def _pad(seqs: Sequence[torch.Tensor], value: int) -> torch.Tensor:
    out = torch.full((len(seqs), max(len(s) for s in seqs)), value, dtype=torch.long)
    for i, seq in enumerate(seqs):
        out[i, : len(seq)] = seq
    return out


def collate(task: str, items: Sequence[dict[str, Any]], tokenizer: Any) -> dict[str, Any]:
    """Stack ``items`` (from :class:`vl_adapter_vlpet.data.base.VLTaskDataset`) into a batch (module docstring)."""
    if not items:
        raise ValueError(f"{task}: cannot collate an empty list of items")
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no pad_token_id; expected a tokenizer with a "
                         "padding token")
    shapes = {tuple(item["vis_feats"].shape) for item in items}
    if len(shapes) > 1:
        raise DataFormatError(f"{task}: items {[item['id'] for item in items]} have visual feature shapes "
                              f"{sorted(shapes)}; expected one (tokens, dim) shape per batch")
    inputs = [item["input_ids"] for item in items]
    input_ids = _pad(inputs, pad)
    lengths = torch.tensor([len(s) for s in inputs])
    batch: dict[str, Any] = {
        "input_ids": input_ids,
        "attention_mask": (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long(),
        "vis_feats": torch.stack([item["vis_feats"] for item in items]).float(),
        "vis_pos": torch.stack([item["vis_pos"] for item in items]).float(),
        "task": task,
        "ids": [str(item["id"]) for item in items],
        "targets": [item.get("target") for item in items],
    }
    for key in ("img_order_ids", "obj_order_ids"):
        if any(key in item for item in items):
            if not all(key in item for item in items):
                raise DataFormatError(f"{task}: some items lack {key!r}; expected it on every item of a batch")
            batch[key] = torch.stack([item[key] for item in items]).long()
    if all(item.get("target_ids") is not None for item in items):
        batch["labels"] = _pad([item["target_ids"] for item in items], -100)
    if task == "vqa" and all(item.get("score") is not None for item in items):
        batch["scores"] = torch.tensor([float(item["score"]) for item in items], dtype=torch.float)
    return batch
