"""Feature stores (h5, parquet release shards, VALUE npz), grid pooling and frame resizing, and their errors."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from data_fixtures import grid_features, write_h5, write_parquet_shard
from vl_adapter_vlpet.data import (
    DataFormatError,
    H5FeatureStore,
    NpzVideoFeatureStore,
    ParquetFeatureStore,
    pool_grid,
    resize_frames,
)


@pytest.fixture
def feats() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {f"COCO_val2014_{i:012d}": grid_features(rng, dim=8) for i in range(5)}


# ------------------------------------------------------------------------------------------------------------- h5


def test_h5_store_reads_per_image_files_as_float32(tmp_path: Path, feats: dict[str, np.ndarray]) -> None:
    for key, value in feats.items():
        write_h5(tmp_path / "a", key, value)
    store = H5FeatureStore([tmp_path / "missing", tmp_path / "a"], dim=8)
    key = next(iter(feats))
    out = store.get(key)
    assert out.dtype == np.float32 and out.shape == (49, 8)
    np.testing.assert_array_equal(out, feats[key].astype(np.float32))
    assert key in store and "nope" not in store


def test_h5_store_searches_folders_in_order_and_single_files(tmp_path: Path, feats: dict[str, np.ndarray]) -> None:
    keys = list(feats)
    write_h5(tmp_path / "vg", keys[0], feats[keys[0]])
    with h5py.File(tmp_path / "all.h5", "w") as fh:  # one file holding several images
        for key in keys[1:]:
            fh.create_dataset(f"{key}/features", data=feats[key])
    store = H5FeatureStore([tmp_path / "vg", tmp_path / "all.h5"], dim=None)
    for key in keys:
        np.testing.assert_array_equal(store.get(key), feats[key].astype(np.float32))


def test_h5_store_errors_name_path_id_and_format(tmp_path: Path, feats: dict[str, np.ndarray]) -> None:
    with pytest.raises(DataFormatError, match=r"no feature folder or file found .*'<img_id>/features'"):
        H5FeatureStore(tmp_path / "absent")
    folder = tmp_path / "f"
    key = next(iter(feats))
    write_h5(folder, key, feats[key])
    store = H5FeatureStore(folder, dim=8)
    with pytest.raises(DataFormatError, match=r"image id 'COCO_x': no features in .*no COCO_x.h5 file"):
        store.get("COCO_x")
    with h5py.File(folder / "wrong_group.h5", "w") as fh:  # file named after the id, group named otherwise
        fh.create_dataset("other/features", data=feats[key])
    with pytest.raises(DataFormatError, match=r"wrong_group.h5: no dataset 'wrong_group/features'"):
        store.get("wrong_group")
    write_h5(folder, "flat", np.zeros(49, dtype=np.float16))
    with pytest.raises(DataFormatError, match=r"flat.h5: features have shape \(49,\); expected \(tokens, 8\)"):
        store.get("flat")
    write_h5(folder, "wide", np.zeros((49, 9), dtype=np.float16))
    with pytest.raises(DataFormatError, match=r"wide.h5: features have shape \(49, 9\); expected \(tokens, 8\)"):
        store.get("wide")
    (folder / "broken.h5").write_bytes(b"not an hdf5 file")
    with pytest.raises(DataFormatError, match=r"broken.h5: cannot be read as HDF5"):
        store.get("broken")


# -------------------------------------------------------------------------------------------------------- parquet


def test_parquet_release_shard_matches_h5(tmp_path: Path, feats: dict[str, np.ndarray]) -> None:
    shard = write_parquet_shard(tmp_path / "features" / "COCO" / "data_clip_RN101_att" / "part-00000.parquet",
                                feats, row_group_size=2)
    schema = pq.read_schema(shard)
    assert schema.field("features").type == pa.list_(pa.list_(pa.float16(), 8), 49)  # the release's column type
    store = ParquetFeatureStore(tmp_path / "features", dim=8)
    assert sorted(store.ids()) == sorted(feats)
    for key in reversed(list(feats)):  # out of order: row groups are re-read through the cache
        np.testing.assert_array_equal(store.get(key), feats[key].astype(np.float32))
    assert len(store._cache) == 1  # cache_row_groups=1 keeps one decoded row group


def test_parquet_real_size_rows_pool_like_h5(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    real = {"COCO_val2014_000000391895": rng.normal(size=(49, 2048)).astype(np.float16)}
    write_parquet_shard(tmp_path / "part-00000.parquet", real)
    write_h5(tmp_path / "h5", "COCO_val2014_000000391895", real["COCO_val2014_000000391895"])
    from_parquet = torch.from_numpy(ParquetFeatureStore(tmp_path / "part-00000.parquet").get(
        "COCO_val2014_000000391895"))
    from_h5 = torch.from_numpy(H5FeatureStore(tmp_path / "h5").get("COCO_val2014_000000391895"))
    assert torch.equal(pool_grid(from_parquet, 6), pool_grid(from_h5, 6))
    assert pool_grid(from_h5, 6).shape == (36, 2048)


def test_parquet_alternative_layouts(tmp_path: Path, feats: dict[str, np.ndarray]) -> None:
    ids = list(feats)
    flat = pa.array([feats[i].astype(np.float32).ravel().tolist() for i in ids], type=pa.list_(pa.float32()))
    table = pa.table({"id": ids, "features": flat}).replace_schema_metadata({"shape": "(49, 8)"})
    pq.write_table(table, tmp_path / "flat.parquet")
    blobs = pa.array([feats[i].tobytes() for i in ids], type=pa.binary())
    table = pa.table({"id": ids, "features": blobs}).replace_schema_metadata({"shape": "(49, 8)", "dtype": "float16"})
    pq.write_table(table, tmp_path / "blob.parquet")
    for name in ("flat", "blob"):
        store = ParquetFeatureStore(tmp_path / f"{name}.parquet", dim=8)
        np.testing.assert_array_equal(store.get(ids[3]), feats[ids[3]].astype(np.float32))


def test_parquet_errors(tmp_path: Path, feats: dict[str, np.ndarray]) -> None:
    with pytest.raises(DataFormatError, match=r"no parquet shard found"):
        ParquetFeatureStore(tmp_path)
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(DataFormatError, match=r"bad.parquet: unreadable parquet file"):
        ParquetFeatureStore(tmp_path / "bad.parquet")
    pq.write_table(pa.table({"image_id": ["a"], "features": [[1.0]]}), tmp_path / "cols.parquet")
    with pytest.raises(DataFormatError, match=r"cols.parquet: missing column\(s\) \['id'\] \(has \['image_id', "):
        ParquetFeatureStore(tmp_path / "cols.parquet")
    pq.write_table(pa.table({"id": ["a"], "features": [[1.0, 2.0, 3.0]]}), tmp_path / "noshape.parquet")
    with pytest.raises(DataFormatError, match=r"cannot tell the \(tokens, dim\) shape"):
        ParquetFeatureStore(tmp_path / "noshape.parquet", dim=None).get("a")
    write_parquet_shard(tmp_path / "ok" / "part.parquet", feats)
    store = ParquetFeatureStore(tmp_path / "ok", dim=2048)
    with pytest.raises(DataFormatError, match=r"image id 'COCO_y': not in the 1 parquet shard"):
        store.get("COCO_y")
    with pytest.raises(DataFormatError, match=r"features have shape \(49, 8\); expected \(tokens, 2048\)"):
        store.get(next(iter(feats)))


def test_parquet_export_h5_rebuilds_the_upstream_tree(tmp_path: Path, feats: dict[str, np.ndarray]) -> None:
    write_parquet_shard(tmp_path / "part.parquet", feats, row_group_size=3)
    store = ParquetFeatureStore(tmp_path / "part.parquet", dim=8)
    assert store.export_h5(tmp_path / "h5") == len(feats)
    assert store.export_h5(tmp_path / "h5") == 0  # existing files are kept
    rebuilt = H5FeatureStore(tmp_path / "h5", dim=8)
    for key, value in feats.items():
        np.testing.assert_array_equal(rebuilt.get(key), value.astype(np.float32))


# ------------------------------------------------------------------------------------------------------------ npz


def test_npz_store_and_errors(tmp_path: Path) -> None:
    folder = tmp_path / "clip-vit"
    folder.mkdir()
    frames = np.arange(30, dtype=np.float32).reshape(3, 10)
    np.savez(folder / "v1.npz", features=frames)
    np.savez(folder / "v2.npz", feats=frames)
    np.savez(folder / "v3.npz", features=np.zeros((3, 7), dtype=np.float32))
    store = NpzVideoFeatureStore(folder, dim=10)
    np.testing.assert_array_equal(store.get("v1"), frames)
    with pytest.raises(DataFormatError, match=r"v2.npz: no array 'features' \(has \['feats'\]\)"):
        store.get("v2")
    with pytest.raises(DataFormatError, match=r"v3.npz: features have shape \(3, 7\); expected \(tokens, 10\)"):
        store.get("v3")
    with pytest.raises(DataFormatError, match=r"video 'v4': no v4.npz in"):
        store.get("v4")
    with pytest.raises(DataFormatError, match=r"no video feature folder found"):
        NpzVideoFeatureStore(tmp_path / "absent")


# ----------------------------------------------------------------------------------------------- pooling / resize


def test_pool_grid_is_the_7x7_to_6x6_max_pool() -> None:
    feats = torch.arange(49, dtype=torch.float32).unsqueeze(1).repeat(1, 3)  # token t has value t
    feats[:, 1] = -feats[:, 1]
    out = pool_grid(feats, 6)
    assert out.shape == (36, 3)
    for i in range(6):
        for j in range(6):
            rows = range(i * 7 // 6, -(-(i + 1) * 7 // 6))  # adaptive windows: [floor(i*7/6), ceil((i+1)*7/6))
            cols = range(j * 7 // 6, -(-(j + 1) * 7 // 6))
            window = [r * 7 + c for r in rows for c in cols]
            assert out[i * 6 + j, 0] == max(window)
            assert out[i * 6 + j, 1] == -min(window)
    assert pool_grid(feats, None) is feats and pool_grid(feats, 7) is feats
    with pytest.raises(DataFormatError, match=r"50 tokens are not a square grid"):
        pool_grid(torch.zeros(50, 3), 6)


def test_resize_frames_pads_or_max_pools_over_time() -> None:
    short = torch.ones(3, 4)
    padded = resize_frames(short, 8)
    assert padded.shape == (8, 4) and padded[:3].eq(1).all() and padded[3:].eq(0).all()
    long = torch.arange(10, dtype=torch.float32).unsqueeze(1)
    pooled = resize_frames(long, 4)  # windows [0,3) [2,5) [5,8) [7,10) -> maxima 2, 4, 7, 9
    assert pooled.squeeze(1).tolist() == [2.0, 4.0, 7.0, 9.0]
    assert resize_frames(long, 10) is long
