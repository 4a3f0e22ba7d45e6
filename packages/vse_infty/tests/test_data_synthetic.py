"""The run-time synthetic image-caption set: raw Flickr30K layout, captions determined by the image content."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from vse_infty.data import VOCABULARY, load_image, make_synthetic_dataset, make_synthetic_split, read_split
from vse_infty.data.synthetic import COLOURS, describe_scene, draw_scene, sample_scene
from vse_infty.evaluation import i2t, t2i


def test_split_is_readable_deterministic_and_merges_ids(tmp_path: Path) -> None:
    root = make_synthetic_dataset(tmp_path / "a", {"train": 6, "test": 4}, seed=1, image_size=32)
    train, test = read_split(root, "f30k", "train"), read_split(root, "f30k", "test")
    assert (train.n_images, train.n_captions, test.n_images) == (6, 30, 4)
    assert not set(train.image_ids) & set(test.image_ids)
    assert len(json.loads((root / "id_mapping.json").read_text())) == 10
    other = make_synthetic_dataset(tmp_path / "b", {"train": 6, "test": 4}, seed=1, image_size=32)
    assert read_split(other, "f30k", "train").captions == train.captions
    assert np.array_equal(np.asarray(load_image(train.image_paths[3])),
                          np.asarray(load_image(read_split(other, "f30k", "train").image_paths[3])))
    make_synthetic_split(root, 3, seed=2, image_size=32, split="train")  # regenerate: the old ids go
    assert len(json.loads((root / "id_mapping.json").read_text())) == 7
    assert read_split(root, "f30k", "train").n_images == 3


def test_captions_use_the_vocabulary_and_describe_the_scene() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        scene = sample_scene(rng)
        captions = describe_scene(scene, rng)
        assert len(captions) == 5 and len(set(captions)) >= 4
        assert all(set(c.split()) <= set(VOCABULARY) for c in captions)
        assert all(scene.first.name in c and scene.second.name in c for c in captions)
        image = np.asarray(draw_scene(scene, 64, rng)).astype(int)
        for shape in (scene.first, scene.second):  # the named colour is drawn at the shape's centre
            pixel = image[int(shape.cy * 64), int(shape.cx * 64)]
            assert np.abs(pixel - np.array(COLOURS[shape.colour])).max() <= 2
        dx, dy = scene.first.cx - scene.second.cx, scene.first.cy - scene.second.cy
        expected = ("above" if dy < 0 else "below") if abs(dy) > abs(dx) else ("left" if dx < 0 else "right")
        assert scene.relation == expected


def colour_presence(pixels: np.ndarray) -> np.ndarray:
    """Which palette colours cover at least 15 pixels (the smallest shape covers about 46 at 48 px)."""
    return np.array([(np.abs(pixels.astype(int) - np.array(rgb)).max(-1) <= 30).sum() >= 15
                     for rgb in COLOURS.values()], dtype=np.float32)


def test_captions_are_predictable_from_the_pixels(tmp_path: Path) -> None:
    root = make_synthetic_split(tmp_path / "s", 40, seed=0, image_size=48, split="test")
    data = read_split(root, "f30k", "test")
    images = np.stack([colour_presence(np.asarray(load_image(p))) for p in data.image_paths])
    captions = np.stack([[float(c in caption.split()) for c in COLOURS] for caption in data.captions])
    assert (images.sum(1) == 2).all() and (captions.sum(1) == 2).all()
    sims = images @ captions.T + 1e-6 * np.random.default_rng(0).standard_normal((40, 200))
    forward, backward = i2t(sims), t2i(sims)
    chance = 100 * 10 / 40
    assert forward["r10"] > 2.5 * chance and backward["r10"] > 2.5 * chance  # colours alone: far above chance
