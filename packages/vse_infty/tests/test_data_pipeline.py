"""Image transforms, datasets, collate functions and loaders: the batch dicts of the package contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import word_tokenizer, write_coco, write_f30k
from peft_core.runtime.distributed import DistInfo
from PIL import Image
from vse_infty.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CaptionDataset,
    DataFormatError,
    ImageDataset,
    ImageTransform,
    PairDataset,
    build_transform,
    load_image,
    make_eval_loaders,
    make_train_loader,
    read_split,
    set_epoch,
)
from vse_infty.data.collate import collate_pairs

SIZE = 24


@pytest.fixture(scope="module")
def f30k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_f30k(tmp_path_factory.mktemp("data") / "f30k", {"train": 6, "test": 3})


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer()


# ------------------------------------------------------------------------------------------------------ transforms


def test_eval_transform_resizes_and_normalises_with_imagenet_stats() -> None:
    image = Image.new("RGB", (40, 30), (255, 128, 0))
    out = build_transform(SIZE, train=False)(image)
    assert out.shape == (3, SIZE, SIZE)
    expected = [(v / 255 - m) / s for v, m, s in zip((255, 128, 0), IMAGENET_MEAN, IMAGENET_STD)]
    torch.testing.assert_close(out.mean(dim=(1, 2)), torch.tensor(expected), atol=1e-5, rtol=0)


def test_resize_is_bilinear_with_half_pixel_centres_like_cv2() -> None:
    # columns [0, 255] upscaled 2 -> 4: cv2 INTER_LINEAR gives [0, 0.25, 0.75, 1] x 255
    pixels = np.zeros((2, 2, 3), dtype=np.uint8)
    pixels[:, 1] = 255
    out = ImageTransform(4, train=False, mean=(0, 0, 0), std=(1, 1, 1))(Image.fromarray(pixels))
    torch.testing.assert_close(out[0, 0], torch.tensor([0.0, 0.25, 0.75, 1.0]))


def test_train_transform_crop_and_flip() -> None:
    pixels = np.random.default_rng(0).integers(0, 255, size=(20, 30, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    full = ImageTransform(SIZE, train=True, crop_range=(1.0, 1.0))
    plain = build_transform(SIZE, train=False)(image)
    flips = set()
    for seed in range(8):
        out = full(image, generator=torch.Generator().manual_seed(seed))
        flipped = torch.allclose(out, plain.flip(-1))
        assert flipped or torch.allclose(out, plain)
        flips.add(flipped)
    assert flips == {True, False}
    train = build_transform(SIZE, train=True)
    a = train(image, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, train(image, generator=torch.Generator().manual_seed(1)))
    assert not torch.equal(a, train(image, generator=torch.Generator().manual_seed(2)))
    assert a.shape == (3, SIZE, SIZE)


def test_random_crop_keeps_60_to_100_percent_of_each_side() -> None:
    transform = build_transform(SIZE, train=True)
    sides = []
    for seed in range(30):
        crop = transform.random_crop(torch.zeros(3, 100, 50), torch.Generator().manual_seed(seed))
        assert abs(crop.shape[1] / 100 - crop.shape[2] / 50) < 0.03  # one ratio for both sides
        sides.append(crop.shape[1])
    assert min(sides) >= 60 and max(sides) <= 100 and max(sides) - min(sides) > 15


def test_grey_and_rgba_images_become_rgb(tmp_path: Path) -> None:
    Image.new("L", (8, 8), 200).save(tmp_path / "grey.png")
    Image.new("RGBA", (8, 8), (10, 20, 30, 40)).save(tmp_path / "rgba.png")
    assert build_transform(8)(load_image(tmp_path / "grey.png")).shape == (3, 8, 8)
    assert load_image(tmp_path / "rgba.png").getpixel((0, 0)) == (10, 20, 30)


def test_unreadable_image_is_a_data_format_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DataFormatError, match=r"bad\.jpg: cannot be decoded as an image"):
        load_image(bad)
    with pytest.raises(DataFormatError, match=r"missing\.jpg: image file not found"):
        load_image(tmp_path / "missing.jpg")


# -------------------------------------------------------------------------------------------- datasets, batches


def test_pair_dataset_raw_items_and_determinism(f30k: Path, tok) -> None:
    data = read_split(f30k, "f30k", "train", "backbone")
    ds = PairDataset(data, tok, build_transform(SIZE, train=True), train=True, max_length=16, seed=5)
    assert len(ds) == 30
    item = ds[7]
    assert item["image"].shape == (3, SIZE, SIZE) and item["image_index"] == 1 and item["caption_index"] == 7
    assert item["input_ids"][0] == tok.cls_token_id and item["input_ids"][-1] == tok.sep_token_id
    again = PairDataset(data, tok, build_transform(SIZE, train=True), train=True, max_length=16, seed=5)[7]
    assert torch.equal(item["image"], again["image"]) and torch.equal(item["input_ids"], again["input_ids"])
    ds.set_epoch(1)
    assert not torch.equal(ds[7]["image"], item["image"])
    evaluation = PairDataset(data, tok, build_transform(SIZE), train=False)
    assert evaluation[7]["input_ids"].tolist() == tok(data.captions[7])["input_ids"]


def test_pair_dataset_precomp_drops_regions_in_training_only(f30k: Path, tok) -> None:
    data = read_split(f30k, "f30k", "train", "precomp")
    full = np.asarray(data.features[2])
    train = PairDataset(data, tok, None, train=True, seed=0)
    lengths = []
    for epoch in range(20):
        train.set_epoch(epoch)
        feats = train[10]["features"].numpy()
        assert 1 <= len(feats) <= 4
        assert all(any(np.array_equal(row, ref) for ref in full) for row in feats)
        lengths.append(len(feats))
    assert min(lengths) < 4 and max(lengths) == 4
    np.testing.assert_array_equal(PairDataset(data, tok, None, train=False)[10]["features"].numpy(), full)


def test_raw_dataset_without_transform_is_an_error(f30k: Path, tok) -> None:
    data = read_split(f30k, "f30k", "train", "backbone")
    with pytest.raises(ValueError, match="raw images need a transform"):
        PairDataset(data, tok, None)
    with pytest.raises(ValueError, match="has no region features"):
        ImageDataset(data.__class__(**{**data.__dict__, "image_source": "precomp"}))


def test_collate_pairs_gives_the_contract_batch(f30k: Path, tok) -> None:
    raw = read_split(f30k, "f30k", "train", "backbone")
    ds = PairDataset(raw, tok, build_transform(SIZE), train=False)
    batch = ds.collate_fn([ds[i] for i in (0, 6, 13)])
    assert set(batch) == {"images", "input_ids", "attention_mask", "image_index", "caption_index"}
    assert batch["images"].shape == (3, 3, SIZE, SIZE)
    assert batch["image_index"].tolist() == [0, 1, 2] and batch["caption_index"].tolist() == [0, 6, 13]
    lengths = [len(tok(raw.captions[i])["input_ids"]) for i in (0, 6, 13)]
    assert batch["input_ids"].shape == (3, max(lengths)) and batch["attention_mask"].sum(1).tolist() == lengths
    assert batch["input_ids"].dtype == torch.long and batch["attention_mask"].dtype == torch.long
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tok.pad_token_id).all()

    items = [{"features": torch.ones(k, 8) * k, "input_ids": torch.tensor([2, 5, 3]), "image_index": k,
              "caption_index": 5 * k} for k in (2, 4, 1)]
    batch = collate_pairs(items)
    assert set(batch) == {"features", "feature_lengths", "input_ids", "attention_mask", "image_index",
                          "caption_index"}
    assert batch["features"].shape == (3, 4, 8) and batch["feature_lengths"].tolist() == [2, 4, 1]
    assert batch["features"][0, 2:].abs().sum() == 0 and batch["features"][2, 0, 0] == 1


def test_eval_datasets_and_batches(f30k: Path, tok) -> None:
    data = read_split(f30k, "f30k", "test", "precomp")
    images, captions = ImageDataset(data), CaptionDataset(data, tok, max_length=8)
    assert len(images) == 3 and len(captions) == 15
    image_batch = images.collate_fn([images[2], images[0]])
    assert set(image_batch) == {"features", "feature_lengths", "image_index"}
    assert image_batch["image_index"].tolist() == [2, 0]
    np.testing.assert_array_equal(image_batch["features"][0].numpy(), np.asarray(data.features[2]))
    caption_batch = captions.collate_fn([captions[14], captions[3]])
    assert set(caption_batch) == {"input_ids", "attention_mask", "caption_index", "image_index"}
    assert caption_batch["caption_index"].tolist() == [14, 3] and caption_batch["image_index"].tolist() == [2, 0]
    assert caption_batch["input_ids"].shape[1] <= 8
    with pytest.raises(IndexError):
        images[3]


# ----------------------------------------------------------------------------------------------------- loaders


def batches(loader) -> list[dict]:
    return list(loader)


def test_train_loader_is_reproducible_per_epoch(f30k: Path, tok) -> None:
    data = read_split(f30k, "f30k", "train", "backbone")
    make = lambda: make_train_loader(data, tok, build_transform(SIZE, train=True), 4, seed=3)
    first, second = make(), make()
    assert len(first) == 30 // 4  # last incomplete batch dropped
    set_epoch(first, 2)
    set_epoch(second, 2)
    a, b = batches(first), batches(second)
    assert [x["caption_index"].tolist() for x in a] == [x["caption_index"].tolist() for x in b]
    assert all(torch.equal(x["images"], y["images"]) and torch.equal(x["input_ids"], y["input_ids"])
               for x, y in zip(a, b))
    set_epoch(second, 3)
    assert [x["caption_index"].tolist() for x in batches(second)] != [x["caption_index"].tolist() for x in a]
    with pytest.raises(ValueError, match="no full batch"):
        make_train_loader(data, tok, build_transform(SIZE), 64)


def test_loaders_shard_over_ranks(f30k: Path, tok) -> None:
    data = read_split(f30k, "f30k", "train", "precomp")
    seen = []
    for rank in range(2):
        loader = make_train_loader(data, tok, None, 3, seed=0, dist_info=DistInfo(rank, 2, rank))
        seen.append({c for x in loader for c in x["caption_index"].tolist()})
    assert not seen[0] & seen[1] and len(seen[0]) == len(seen[1]) == 15
    shards = [make_eval_loaders(data, tok, None, 2, dist_info=DistInfo(rank, 2, rank)) for rank in range(2)]
    image_ids = [[i for x in img for i in x["image_index"].tolist()] for img, _ in shards]
    caption_ids = [[i for x in cap for i in x["caption_index"].tolist()] for _, cap in shards]
    assert image_ids == [[0, 2, 4], [1, 3, 5]]
    assert sorted(caption_ids[0] + caption_ids[1]) == list(range(30)) and caption_ids[0][:3] == [0, 2, 4]


def test_coco_raw_eval_loaders(tmp_path: Path, tok) -> None:
    root = write_coco(tmp_path / "coco", {"testall": 5}, image_size=16)
    data = read_split(root, "coco", "testall", "backbone")
    images, captions = make_eval_loaders(data, tok, build_transform(SIZE), 4)
    image_batches, caption_batches = batches(images), batches(captions)
    assert [len(x["image_index"]) for x in image_batches] == [4, 1]
    assert image_batches[0]["images"].shape == (4, 3, SIZE, SIZE)
    assert sum(len(x["caption_index"]) for x in caption_batches) == 25
