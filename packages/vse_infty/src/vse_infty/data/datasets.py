"""Datasets over a :class:`~vse_infty.data.layout.SplitData`: training pairs, evaluation images and captions.

Upstream woodfrog/vse_infty@47fbb71f37:lib/datasets/image_caption.py iterates over the captions (an epoch visits
every caption once, each with its image ``index // 5``) and, in training, augments the caption
(:mod:`vse_infty.data.captions`), the raw image (:mod:`vse_infty.data.transforms`) and, for precomputed regions,
drops each region with probability 0.2 (``image[np.where(np.random.rand(K) > 0.20)]``; here at least one region is
always kept, since an empty set cannot be pooled). Training randomness is drawn from ``(seed, epoch, index)`` so an
epoch is the same whatever the worker count, and a resumed run sees the same batches.

Evaluation encodes every image once (:class:`ImageDataset`) and every caption once (:class:`CaptionDataset`);
upstream encoded each image 5 times (once per caption) and kept ``img_embs[::5]``, the same embeddings.
"""

from __future__ import annotations

import random
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from vse_infty.data.captions import AUG_PROB, CaptionEncoder
from vse_infty.data.collate import collate_captions, collate_images, collate_pairs
from vse_infty.data.layout import SplitData
from vse_infty.data.transforms import ImageTransform, load_image

FEATURE_DROP = 0.2
Transform = Any  # ImageTransform or any callable PIL.Image -> Float[3, H, W]


def _check_image_source(data: SplitData, transform: Transform | None, owner: str) -> None:
    if data.image_source == "backbone":
        if data.image_paths is None:
            raise ValueError(f"{owner}: {data.root} {data.split} was read without image paths; expected "
                             "read_split(..., image_source='backbone')")
        if transform is None:
            raise ValueError(f"{owner}: raw images need a transform; pass build_transform(input_size, train)")
    elif data.features is None:
        raise ValueError(f"{owner}: {data.root} {data.split} has no region features; expected "
                         "read_split(..., image_source='precomp')")


class _ImageSource:
    """Image ``i`` of a split as a transformed tensor (``"image"``) or its region features (``"features"``)."""

    def __init__(self, data: SplitData, transform: Transform | None) -> None:
        self.data, self.transform = data, transform

    def get(self, i: int, generator: torch.Generator | None = None, np_rng: np.random.Generator | None = None,
            drop: float = 0.0) -> dict[str, torch.Tensor]:
        if self.data.image_source == "backbone":
            assert self.data.image_paths is not None
            image = load_image(self.data.image_paths[i])
            if isinstance(self.transform, ImageTransform):
                return {"image": self.transform(image, generator=generator)}
            return {"image": torch.as_tensor(self.transform(image))}
        assert self.data.features is not None
        feats = np.array(self.data.features[i], dtype=np.float32)  # a writable copy of the memory-mapped rows
        if np_rng is not None and drop > 0.0:
            draws = np_rng.random(len(feats))
            keep = draws > drop
            if not keep.any():
                keep[int(draws.argmax())] = True
            feats = feats[keep]
        return {"features": torch.from_numpy(feats)}


class PairDataset(Dataset):
    """Caption ``index`` with its image ``index // 5``: one training (or validation-loss) pair per caption."""

    def __init__(self, split_data: SplitData, tokenizer: PreTrainedTokenizerBase, transform: Transform | None = None,
                 train: bool = True, max_length: int | None = None, *, seed: int = 0,
                 feature_drop: float = FEATURE_DROP, aug_prob: float = AUG_PROB) -> None:
        _check_image_source(split_data, transform, "PairDataset")
        self.data = split_data
        self.train = bool(train)
        self.encoder = CaptionEncoder(tokenizer, max_length, aug_prob if train else 0.0)
        self.images = _ImageSource(split_data, transform)
        self.seed, self.epoch = int(seed), 0
        self.feature_drop = feature_drop if train else 0.0
        self.collate_fn = partial(collate_pairs, pad_token_id=self.encoder.pad_token_id)

    def set_epoch(self, epoch: int) -> None:
        """Training randomness depends on ``(seed, epoch, index)``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.data.n_captions

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"caption index {index} out of range for {len(self)} captions")
        image_index = self.data.image_of_caption(index)
        caption_rng = generator = np_rng = None
        if self.train:
            state = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(3)
            caption_rng = random.Random(int(state[0]))
            generator = torch.Generator().manual_seed(int(state[1]))
            np_rng = np.random.default_rng(int(state[2]))
        item: dict[str, Any] = self.images.get(image_index, generator, np_rng, self.feature_drop)
        item["input_ids"] = torch.tensor(self.encoder(self.data.captions[index], caption_rng), dtype=torch.long)
        item["image_index"], item["caption_index"] = image_index, index
        return item


class ImageDataset(Dataset):
    """Every image of a split once (evaluation): ``{"image" | "features", "image_index"}``."""

    def __init__(self, split_data: SplitData, transform: Transform | None = None) -> None:
        _check_image_source(split_data, transform, "ImageDataset")
        self.data = split_data
        self.images = _ImageSource(split_data, transform)
        self.collate_fn = collate_images

    def __len__(self) -> int:
        return self.data.n_images

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"image index {index} out of range for {len(self)} images")
        return {**self.images.get(index), "image_index": index}


class CaptionDataset(Dataset):
    """Every caption of a split once (evaluation): ``{"input_ids", "caption_index", "image_index"}``."""

    def __init__(self, split_data: SplitData, tokenizer: PreTrainedTokenizerBase,
                 max_length: int | None = None) -> None:
        self.data = split_data
        self.encoder = CaptionEncoder(tokenizer, max_length, 0.0)
        self.collate_fn = partial(collate_captions, pad_token_id=self.encoder.pad_token_id)

    def __len__(self) -> int:
        return self.data.n_captions

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"caption index {index} out of range for {len(self)} captions")
        ids = torch.tensor(self.encoder(self.data.captions[index]), dtype=torch.long)
        return {"input_ids": ids, "caption_index": index, "image_index": self.data.image_of_caption(index)}
