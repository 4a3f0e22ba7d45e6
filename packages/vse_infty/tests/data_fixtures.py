"""Tiny datasets in the exact upstream VSE-infty layouts, for the tests of every part of the package.

    from data_fixtures import write_f30k, write_coco, word_tokenizer

    root = write_f30k(tmp_path / "f30k")     # f30k: precomp/{split}_caps.txt, {split}_ids.txt (one id per image),
                                             # {split}_ims.npy, id_mapping.json, flickr30k-images/*.jpg
    root = write_coco(tmp_path / "coco")     # coco: the same with ids repeated on each image's 5 caption lines,
                                             # images/{train2014,val2014}/COCO_*_<12-digit id>.jpg, split testall
    read_split(root, "f30k", "train", "backbone" | "precomp")

Images and captions come from :mod:`vse_infty.data.synthetic` (captions use only ``VOCABULARY``); region features
are random, ``(n_images, regions, feature_dim)`` float32.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from transformers import BertTokenizer
from vse_infty.data.synthetic import VOCABULARY, describe_scene, draw_scene, make_synthetic_split, sample_scene

F30K_SIZES = {"train": 4, "dev": 2, "test": 3}
COCO_SIZES = {"train": 4, "dev": 2, "test": 2, "testall": 10}
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
EXTRA_PIECES = ("##s", ",", ".")


def word_tokenizer(words: tuple[str, ...] = VOCABULARY) -> BertTokenizer:
    """A BERT word-piece tokenizer over the synthetic vocabulary (+ ``##s`` and punctuation); no files."""
    tokens = [*SPECIAL_TOKENS, *words, *EXTRA_PIECES]
    return BertTokenizer(vocab={t: i for i, t in enumerate(tokens)})


def write_features(path: Path, n_images: int, regions: int, feature_dim: int, seed: int) -> np.ndarray:
    features = np.random.default_rng(seed).standard_normal((n_images, regions, feature_dim)).astype(np.float32)
    np.save(path, features)
    return features


def write_f30k(root: str | Path, sizes: Mapping[str, int] | None = None, *, image_size: int = 32, regions: int = 4,
               feature_dim: int = 8, seed: int = 0) -> Path:
    """Flickr30K layout (raw images and precomputed features) with ``sizes[split]`` images per split."""
    root = Path(root)
    for n, (split, n_images) in enumerate((sizes or F30K_SIZES).items()):
        make_synthetic_split(root, n_images, seed, image_size, split=split)
        write_features(root / "precomp" / f"{split}_ims.npy", n_images, regions, feature_dim, seed + 100 + n)
    return root


def coco_file(split: str, image_id: int) -> str:
    folder = "train2014" if split == "train" else "val2014"
    return f"{folder}/COCO_{folder}_{image_id:012d}.jpg"


def write_coco(root: str | Path, sizes: Mapping[str, int] | None = None, *, image_size: int = 32, regions: int = 4,
               feature_dim: int = 8, seed: int = 0) -> Path:
    """COCO layout: COCO-style ids repeated 5x per image in ``{split}_ids.txt``, id_mapping to
    ``{train2014,val2014}/COCO_*_<id>.jpg`` under ``images/``; splits train, dev, test, testall."""
    root = Path(root)
    precomp = root / "precomp"
    precomp.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    mapping: dict[str, str] = {}
    next_id = 9
    for n, (split, n_images) in enumerate((sizes or COCO_SIZES).items()):
        captions: list[str] = []
        ids: list[int] = []
        for _ in range(n_images):
            image_id = next_id
            next_id += 37
            scene = sample_scene(rng)
            path = root / "images" / coco_file(split, image_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            draw_scene(scene, image_size, rng).save(path, quality=95)
            mapping[str(image_id)] = coco_file(split, image_id)
            captions += describe_scene(scene, rng)
            ids += [image_id] * 5
        (precomp / f"{split}_caps.txt").write_text("\n".join(captions) + "\n", encoding="utf-8")
        (precomp / f"{split}_ids.txt").write_text("\n".join(map(str, ids)) + "\n", encoding="utf-8")
        write_features(precomp / f"{split}_ims.npy", n_images, regions, feature_dim, seed + 200 + n)
    (root / "id_mapping.json").write_text(json.dumps(mapping), encoding="utf-8")
    return root
