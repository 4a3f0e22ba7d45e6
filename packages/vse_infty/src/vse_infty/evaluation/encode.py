"""Embed every image and caption of a split, on one process or sharded over DDP ranks.

Upstream woodfrog/vse_infty@3d6e405b3f:lib/evaluation.py:encode_data fills ``img_embs[ids]`` / ``cap_embs[ids]``
batch by batch on one process. Here each rank encodes its shard (loaders built with
:class:`peft_core.runtime.distributed.ShardSampler`), the ``(indices, embeddings)`` chunks of all ranks are
concatenated with :func:`~peft_core.runtime.distributed.gather_lists`, and the rows are put back in index order;
a missing or duplicated index is an error. The model runs in eval mode under ``torch.no_grad()`` (autocast fp16
on CUDA with ``amp``) and gets its training mode back afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import nullcontext

import numpy as np
import torch
from peft_core.runtime.distributed import DistInfo, gather_lists
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

Chunk = tuple[np.ndarray, np.ndarray]


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _encode(encode: Callable[[dict], torch.Tensor], batches: Iterable[dict], key: str, device: torch.device,
            amp: bool) -> list[Chunk]:
    chunks: list[Chunk] = []
    autocast = torch.autocast(device.type, dtype=torch.float16) if amp and device.type == "cuda" else nullcontext()
    for batch in batches:
        if key not in batch:
            raise KeyError(f"evaluation batch has no {key!r}; expected the batches of collate_images / "
                           f"collate_captions (keys: {sorted(batch)})")
        with autocast:
            emb = encode(_to_device(batch, device))
        if emb.ndim != 2 or emb.shape[0] != len(batch[key]):
            raise ValueError(f"encoder returned shape {tuple(emb.shape)} for {len(batch[key])} items; expected "
                             "(batch, embed_size)")
        chunks.append((batch[key].cpu().numpy().astype(np.int64), emb.detach().float().cpu().numpy()))
    return chunks


def assemble(chunks: list[Chunk], n_items: int, what: str) -> np.ndarray:
    """Rows of ``(indices, embeddings)`` chunks placed at their indices; every index in ``[0, n_items)`` once."""
    if not chunks:
        raise ValueError(f"no {what} embeddings to assemble; expected {n_items} items")
    dim = chunks[0][1].shape[1]
    out = np.zeros((n_items, dim), dtype=np.float32)
    seen = np.zeros(n_items, dtype=np.int64)
    for indices, embs in chunks:
        if indices.size and (indices.min() < 0 or indices.max() >= n_items):
            raise ValueError(f"{what} index out of range [0, {n_items}): {indices.min()}..{indices.max()}")
        out[indices] = embs
        np.add.at(seen, indices, 1)
    if not (seen == 1).all():
        missing, repeated = np.flatnonzero(seen == 0), np.flatnonzero(seen > 1)
        raise ValueError(f"{what} embeddings: {len(missing)} index(es) missing (e.g. {missing[:5].tolist()}) and "
                         f"{len(repeated)} repeated (e.g. {repeated[:5].tolist()}); expected each of {n_items} once "
                         "(shard with ShardSampler)")
    return out


def encode_split(model: nn.Module, image_loader: DataLoader, caption_loader: DataLoader, device: torch.device | str,
                 amp: bool = False, progress: bool = False, dist_info: DistInfo | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``(img_embs (n_images, E), cap_embs (n_captions, E))`` in index order, float32, on every rank."""
    info = dist_info or DistInfo()
    device = torch.device(device)
    net = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    show = progress and info.is_main
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            images = _encode(net.encode_images, tqdm(image_loader, desc="encode images", disable=not show),
                             "image_index", device, amp)
            captions = _encode(net.encode_texts, tqdm(caption_loader, desc="encode captions", disable=not show),
                               "caption_index", device, amp)
    finally:
        net.train(was_training)
    img_embs = assemble(gather_lists(images, info), len(image_loader.dataset), "image")
    cap_embs = assemble(gather_lists(captions, info), len(caption_loader.dataset), "caption")
    return img_embs, cap_embs
