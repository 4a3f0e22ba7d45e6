"""Readers of the upstream Flickr30K / COCO layouts: what they return and every error they raise."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import write_coco, write_f30k
from vse_infty.data import DataFormatError, read_split
from vse_infty.data.layout import UPSTREAM_DEV_IMAGES, read_ids


@pytest.fixture(scope="module")
def f30k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_f30k(tmp_path_factory.mktemp("data") / "f30k")


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_coco(tmp_path_factory.mktemp("data") / "coco")


def copy_tree(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_f30k_raw_split(f30k: Path) -> None:
    data = read_split(f30k, "f30k", "test", "backbone")
    caps = (f30k / "precomp" / "test_caps.txt").read_text().splitlines()
    ids = [int(x) for x in (f30k / "precomp" / "test_ids.txt").read_text().split()]
    mapping = json.loads((f30k / "id_mapping.json").read_text())
    assert data.n_images == 3 and data.n_captions == 15 and data.captions == caps
    assert data.image_ids == ids
    assert data.image_paths == [f30k / "flickr30k-images" / mapping[str(i)] for i in ids]
    assert all(p.is_file() for p in data.image_paths) and data.features is None
    assert [data.image_of_caption(c) for c in (0, 4, 5, 14)] == [0, 0, 1, 2]


def test_f30k_precomp_split_is_memory_mapped(f30k: Path) -> None:
    data = read_split(f30k, "f30k", "train", "precomp")
    expected = np.load(f30k / "precomp" / "train_ims.npy")
    assert isinstance(data.features, np.memmap) and data.features.shape == (4, 4, 8)
    np.testing.assert_array_equal(np.asarray(data.features), expected)
    assert data.image_paths is None and data.n_captions == 20


def test_coco_ids_repeated_per_caption_give_one_id_per_image(coco: Path) -> None:
    data = read_split(coco, "coco", "testall", "backbone")
    lines = [int(x) for x in (coco / "precomp" / "testall_ids.txt").read_text().split()]
    assert len(lines) == 50 and data.image_ids == lines[::5] and data.n_images == 10
    assert data.image_paths[0].relative_to(coco / "images").parts[0] == "val2014"
    train = read_split(coco, "coco", "train", "backbone")
    assert train.image_paths[0].name.startswith("COCO_train2014_")


def test_dev_keeps_the_first_1000_images_as_upstream(tmp_path: Path) -> None:
    n = UPSTREAM_DEV_IMAGES + 3
    precomp = tmp_path / "f30k" / "precomp"
    precomp.mkdir(parents=True)
    (precomp / "dev_caps.txt").write_text("".join(f"caption {i}\n" for i in range(5 * n)))
    features = np.arange(n * 2, dtype=np.float32).reshape(n, 1, 2)
    np.save(precomp / "dev_ims.npy", features)
    data = read_split(tmp_path / "f30k", "f30k", "dev", "precomp")
    assert data.n_images == UPSTREAM_DEV_IMAGES and data.n_captions == 5 * UPSTREAM_DEV_IMAGES
    assert data.captions[-1] == f"caption {5 * UPSTREAM_DEV_IMAGES - 1}"
    assert data.features.shape[0] == UPSTREAM_DEV_IMAGES and data.image_ids[-1] == UPSTREAM_DEV_IMAGES - 1
    assert read_split(tmp_path / "f30k", "f30k", "dev", "precomp", upstream_dev_limit=False).n_images == n
    assert read_split(tmp_path / "f30k", "f30k", "dev", "precomp", max_images=7).n_captions == 35


def test_read_ids_accepts_per_image_and_per_caption(tmp_path: Path) -> None:
    path = tmp_path / "ids.txt"
    path.write_text("7\n8\n")
    assert read_ids(path, 2) == [7, 8]
    path.write_text("7\n" * 5 + "8\n" * 5)
    assert read_ids(path, 2) == [7, 8]


# ------------------------------------------------------------------------------------------------------- errors


def expect_error(match: str, *args, **kwargs) -> str:
    with pytest.raises(DataFormatError, match=match) as info:
        read_split(*args, **kwargs)
    return str(info.value)


def test_missing_dataset_folder(tmp_path: Path) -> None:
    message = expect_error("dataset folder not found", tmp_path / "nowhere", "f30k", "train")
    assert str(tmp_path / "nowhere") in message and "id_mapping.json" in message


def test_missing_precomp_folder_and_captions(tmp_path: Path) -> None:
    (tmp_path / "f30k").mkdir()
    expect_error("precomp: folder not found", tmp_path / "f30k", "f30k", "train")
    (tmp_path / "f30k" / "precomp").mkdir()
    message = expect_error("train_caps.txt: file not found", tmp_path / "f30k", "f30k", "train")
    assert "one caption per line, 5 consecutive lines per image" in message


def test_unknown_split_and_names(f30k: Path) -> None:
    expect_error("unknown f30k split 'testall'", f30k, "f30k", "testall")
    with pytest.raises(ValueError, match="dataset='flickr'"):
        read_split(f30k, "flickr", "train")
    with pytest.raises(ValueError, match="image_source='raw'"):
        read_split(f30k, "f30k", "train", "raw")


def test_caption_count_not_a_multiple_of_5(f30k: Path, tmp_path: Path) -> None:
    root = copy_tree(f30k, tmp_path / "f30k")
    caps = root / "precomp" / "train_caps.txt"
    caps.write_text("\n".join(caps.read_text().splitlines()[:-1]) + "\n")
    message = expect_error("19 captions is not a multiple of 5", root, "f30k", "train")
    assert str(caps) in message


def test_blank_caption_line_and_empty_split(f30k: Path, tmp_path: Path) -> None:
    root = copy_tree(f30k, tmp_path / "f30k")
    caps = root / "precomp" / "train_caps.txt"
    lines = caps.read_text().splitlines()
    caps.write_text("\n".join([lines[0], "", *lines[2:]]) + "\n")
    expect_error("line 2: empty caption", root, "f30k", "train")
    caps.write_text("\n\n")
    expect_error("the file is empty", root, "f30k", "train")


def test_ids_count_mismatch_and_bad_ids(f30k: Path, tmp_path: Path) -> None:
    root = copy_tree(f30k, tmp_path / "f30k")
    ids = root / "precomp" / "train_ids.txt"
    ids.write_text("0\n1\n2\n")
    message = expect_error("3 ids for 4 images", root, "f30k", "train")
    assert "expected 4 or 20 lines" in message and str(ids) in message
    ids.write_text("0\n1\nx2\n3\n")
    expect_error("line 3: 'x2' is not an integer id", root, "f30k", "train")
    ids.write_text("0\n" * 4 + "1\n" + "1\n" * 15)
    expect_error(r"lines 1-5: ids \[0, 0, 0, 0, 1\] differ", root, "f30k", "train")
    ids.unlink()
    expect_error("train_ids.txt: file not found", root, "f30k", "train")


def test_id_not_in_mapping_and_bad_mapping(f30k: Path, tmp_path: Path) -> None:
    root = copy_tree(f30k, tmp_path / "f30k")
    mapping_path = root / "id_mapping.json"
    mapping = json.loads(mapping_path.read_text())
    ids = (root / "precomp" / "train_ids.txt").read_text().split()
    del mapping[ids[1]]
    mapping_path.write_text(json.dumps(mapping))
    message = expect_error("1 image id.s. not in the mapping", root, "f30k", "train")
    assert f"[{ids[1]}]" in message and str(mapping_path) in message
    mapping_path.write_text("{not json")
    expect_error("not valid JSON", root, "f30k", "train")
    mapping_path.write_text(json.dumps([1, 2]))
    expect_error("not an object of strings", root, "f30k", "train")
    mapping_path.unlink()
    expect_error("id_mapping.json: file not found", root, "f30k", "train")


def test_missing_image_folder_and_file(f30k: Path, tmp_path: Path) -> None:
    root = copy_tree(f30k, tmp_path / "f30k")
    data = read_split(root, "f30k", "train", "backbone")
    data.image_paths[2].unlink()
    message = expect_error("image file not found", root, "f30k", "train")
    assert str(data.image_paths[2]) in message and "1 of 4 missing" in message
    assert read_split(root, "f30k", "train", "backbone", check_images=False).n_images == 4
    import shutil

    shutil.rmtree(root / "flickr30k-images")
    expect_error("flickr30k-images: image folder not found", root, "f30k", "train")


def test_features_wrong_ndim_rows_dtype_and_missing(f30k: Path, tmp_path: Path) -> None:
    root = copy_tree(f30k, tmp_path / "f30k")
    ims = root / "precomp" / "train_ims.npy"
    np.save(ims, np.zeros((4, 8), dtype=np.float32))
    message = expect_error("has 2 dimension", root, "f30k", "train", "precomp")
    assert "(n_images, n_regions, feature_dim)" in message and str(ims) in message
    np.save(ims, np.zeros((5, 3, 8), dtype=np.float32))
    expect_error("5 feature rows for 4 images", root, "f30k", "train", "precomp")
    np.save(ims, np.zeros((4, 3, 8), dtype=np.int64))
    expect_error("dtype int64", root, "f30k", "train", "precomp")
    ims.write_bytes(b"not a npy file")
    expect_error("cannot be read as a .npy array", root, "f30k", "train", "precomp")
    ims.unlink()
    expect_error("train_ims.npy: file not found", root, "f30k", "train", "precomp")


def test_errors_are_value_errors() -> None:
    assert issubclass(DataFormatError, ValueError)
