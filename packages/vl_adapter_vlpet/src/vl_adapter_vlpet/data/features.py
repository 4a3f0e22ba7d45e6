"""Feature stores (CLIP RN101 grid features of images, VALUE CLIP-ViT features of videos) and their pooling.

Formats, as read by upstream (HenryHZY/VL-PET@7430cad ``src/vqa_clip_data.py``, ``gqa_clip_data.py``,
``nlvr_clip_data.py``, ``caption_clip_data.py``, ``src/video/tvqa_data.py``) and as written by the public dataset
release (ylsung/VL_adapter ``tools/convert_zip_to_hf.py`` / ``tools/restore_datasets.py``, HF dataset
``ylsung/VL-Adapter-datasets``):

* **h5**: one file per image, ``<dir>/<img_id>.h5`` holding the group ``<img_id>`` with the dataset ``features``
  of shape (49, 2048), float16 (the 7 x 7 grid of the last CLIP RN101 conv layer at 224 px, row-major). Folders
  ``datasets/{COCO,VG,GQA,nlvr}/clip_features/data_clip_RN101_att/``. A single h5 file holding many
  ``<img_id>/features`` datasets is read too.
* **parquet**: the release's shards ``features/<D>/data_clip_RN101_att/part-XXXXX.parquet`` with the columns
  ``id`` (string, the image id) and ``features`` (``fixed_size_list<fixed_size_list<halffloat>[2048]>[49]``), schema
  metadata ``shape`` / ``dtype``. Also accepted: variable-size nested lists, a flat list with the ``shape`` metadata,
  and binary blobs with ``shape`` / ``dtype`` metadata. Random access decodes a whole row group (the release writes
  one per 4,096-image shard, about 0.8 GB decoded); decoded row groups are cached (``cache_row_groups``), so reading in
  shard order is fast; for shuffled training, :meth:`ParquetFeatureStore.export_h5` rebuilds the per-image h5 tree
  once (what the release's ``restore_datasets.py`` does).
* **npz** (video): ``<dir>/<vid_name>.npz`` with the array ``features`` of shape (frames, 512), VALUE CLIP-ViT.

Boxes are all zeros for these grid / frame features (upstream: ``boxes = torch.zeros(feats.shape[0], 4)``).

Pooling: upstream ``--downsample`` (``src/modeling_bart.py:Downsample``, applied by the model to the raw features
before the visual embedding) reshapes the L = 49 tokens row-major to 7 x 7 and applies ``AdaptiveMaxPool2d((6, 6))``
-> 36 tokens (NLVR2: each image separately -> 72). Here the same is done by :func:`pool_grid` in the data pipeline
(the model receives 36 tokens). Video features go through upstream's ``resize`` (:func:`resize_frames`): zero-padded
to 64 frames or ``adaptive_max_pool1d`` over time to 64 (the model's 8 x 8 downsample of 64 tokens is the identity).
"""

from __future__ import annotations

import ast
import math
import os
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.nn import functional as F

from vl_adapter_vlpet.data.errors import DataFormatError

H5_FORMAT = "per-image files '<img_id>.h5' holding the dataset '<img_id>/features' of shape (49, 2048) (CLIP RN101)"
PARQUET_FORMAT = ("parquet shards with an 'id' string column and a 'features' column of nested lists (49 x 2048, "
                  "float16), as in the HF dataset ylsung/VL-Adapter-datasets")
NPZ_FORMAT = "per-video files '<vid_name>.npz' holding the array 'features' of shape (frames, 512) (VALUE CLIP-ViT)"


class FeatureStore(Protocol):
    """Maps an image / video id to its raw features, a float32 array (tokens, dim)."""

    def get(self, key: str) -> np.ndarray: ...

    def __contains__(self, key: object) -> bool: ...


def _paths(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    if isinstance(paths, str | Path):
        return [Path(paths)]
    return [Path(p) for p in paths]


def _check_array(array: np.ndarray, where: str, dim: int | None, expected: str) -> np.ndarray:
    if array.ndim != 2 or array.shape[0] == 0 or (dim is not None and array.shape[1] != dim):
        want = f"(tokens, {dim})" if dim is not None else "(tokens, dim)"
        raise DataFormatError(f"{where}: features have shape {tuple(array.shape)}; expected {want}: {expected}")
    if not np.issubdtype(array.dtype, np.floating):
        raise DataFormatError(f"{where}: features have dtype {array.dtype}; expected floating point: {expected}")
    return np.asarray(array, dtype=np.float32)


class H5FeatureStore:
    """CLIP grid features from per-image h5 files in one or more folders (searched in order), or from h5 files
    holding many images. ``dim``: the expected feature size (``None``: any)."""

    def __init__(self, paths: str | Path | Iterable[str | Path], dim: int | None = 2048) -> None:
        given = _paths(paths)
        self.dirs = [p for p in given if p.is_dir()]
        self.files = [p for p in given if p.is_file()]
        self.dim = dim
        if not self.dirs and not self.files:
            raise DataFormatError(f"no feature folder or file found at {[str(p) for p in given]}; expected "
                                  f"{H5_FORMAT}")
        self._open: dict[Path, h5py.File] = {}
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"H5FeatureStore({[str(p) for p in self.dirs + self.files]})"

    def _handle(self, path: Path) -> h5py.File:
        if self._pid != os.getpid():  # a DataLoader worker: never share h5 handles across fork
            self._open, self._pid = {}, os.getpid()
        if path not in self._open:
            try:
                self._open[path] = h5py.File(path, "r")
            except OSError as exc:
                raise DataFormatError(f"{path}: cannot be opened as HDF5 ({exc}); expected {H5_FORMAT}") from None
        return self._open[path]

    def _locate(self, key: str) -> Path | None:
        for folder in self.dirs:
            path = folder / f"{key}.h5"
            if path.is_file():
                return path
        for path in self.files:
            if f"{key}/features" in self._handle(path):
                return path
        return None

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._locate(key) is not None

    def get(self, key: str) -> np.ndarray:
        path = self._locate(key)
        if path is None:
            raise DataFormatError(f"image id {key!r}: no features in {[str(p) for p in self.dirs + self.files]} "
                                  f"(no {key}.h5 file); expected {H5_FORMAT}")
        if path in self.files:
            return _check_array(self._handle(path)[f"{key}/features"][()], f"{path}[{key}/features]", self.dim,
                                H5_FORMAT)
        try:
            with h5py.File(path, "r") as fh:
                if f"{key}/features" not in fh:
                    raise DataFormatError(f"{path}: no dataset '{key}/features' (top-level keys {list(fh.keys())[:5]}"
                                          f"); expected {H5_FORMAT}")
                array = fh[f"{key}/features"][()]
        except OSError as exc:
            raise DataFormatError(f"{path}: cannot be read as HDF5 ({exc}); expected {H5_FORMAT}") from None
        return _check_array(array, str(path), self.dim, H5_FORMAT)


def _shard_paths(paths: Iterable[Path]) -> list[Path]:
    shards: list[Path] = []
    for path in paths:
        if path.is_dir():
            shards.extend(sorted(path.rglob("*.parquet")))
        elif path.is_file():
            shards.append(path)
    return shards


class ParquetFeatureStore:
    """CLIP grid features from parquet shards (the HF release's format, see the module docstring).

    Args:
        paths: shard files and / or folders (searched recursively for ``*.parquet``).
        id_column / feature_column: column names (the release: ``id`` / ``features``).
        dim: expected feature size (``None``: any). cache_row_groups: decoded row groups kept in memory.
    """

    def __init__(self, paths: str | Path | Iterable[str | Path], id_column: str = "id",
                 feature_column: str = "features", dim: int | None = 2048, cache_row_groups: int = 1) -> None:
        given = _paths(paths)
        self.shards = _shard_paths(given)
        if not self.shards:
            raise DataFormatError(f"no parquet shard found at {[str(p) for p in given]}; expected {PARQUET_FORMAT}")
        self.id_column, self.feature_column, self.dim = id_column, feature_column, dim
        self.cache_row_groups = max(1, cache_row_groups)
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self.index: dict[str, tuple[int, int, int]] = {}
        self._shapes: list[tuple[int, ...] | None] = []
        for shard_id, path in enumerate(self.shards):
            self._index_shard(shard_id, path)

    def __repr__(self) -> str:
        return f"ParquetFeatureStore({len(self.shards)} shards, {len(self.index)} ids)"

    def _open(self, path: Path) -> pq.ParquetFile:
        try:
            return pq.ParquetFile(path)
        except (OSError, pa.ArrowException) as exc:
            raise DataFormatError(f"{path}: unreadable parquet file ({exc}); expected {PARQUET_FORMAT}") from None

    def _index_shard(self, shard_id: int, path: Path) -> None:
        shard = self._open(path)
        names = shard.schema_arrow.names
        missing = [c for c in (self.id_column, self.feature_column) if c not in names]
        if missing:
            raise DataFormatError(f"{path}: missing column(s) {missing} (has {names}); expected {PARQUET_FORMAT}")
        metadata = shard.schema_arrow.metadata or {}
        shape = metadata.get(b"shape")
        self._shapes.append(tuple(ast.literal_eval(shape.decode())) if shape else None)
        try:
            ids = shard.read(columns=[self.id_column]).column(0).to_pylist()
        except (OSError, pa.ArrowException) as exc:
            raise DataFormatError(f"{path}: column {self.id_column!r} cannot be read ({exc}); expected "
                                  f"{PARQUET_FORMAT}") from None
        row = 0
        for group in range(shard.metadata.num_row_groups):
            for offset in range(shard.metadata.row_group(group).num_rows):
                self.index[str(ids[row])] = (shard_id, group, offset)
                row += 1

    def __contains__(self, key: object) -> bool:
        return key in self.index

    def ids(self) -> list[str]:
        return list(self.index)

    def _decode(self, column: pa.ChunkedArray, shard_id: int) -> np.ndarray:
        path, meta_shape = self.shards[shard_id], self._shapes[shard_id]
        array = column.combine_chunks()
        rows = len(array)
        kind = array.type
        if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind):
            if meta_shape is None:
                raise DataFormatError(f"{path}: binary column {self.feature_column!r} needs the schema metadata "
                                      f"'shape' (e.g. '(49, 2048)'); expected {PARQUET_FORMAT}")
            dtype = np.dtype((self._open(path).schema_arrow.metadata or {}).get(b"dtype", b"float16").decode())
            values = np.stack([np.frombuffer(b, dtype=dtype) for b in array.to_pylist()])
            return values.reshape(rows, *meta_shape)
        shape: tuple[int, ...] | None = meta_shape
        values = array
        depth = 0
        while pa.types.is_list(values.type) or pa.types.is_large_list(values.type) \
                or pa.types.is_fixed_size_list(values.type):
            values = values.flatten()
            depth += 1
        if depth == 0 or not pa.types.is_floating(values.type):
            raise DataFormatError(f"{path}: column {self.feature_column!r} has type {kind}; expected {PARQUET_FORMAT}")
        if shape is None and depth == 2:
            first = array[0].as_py()
            shape = (len(first), len(first[0]))
        if shape is None:
            raise DataFormatError(f"{path}: cannot tell the (tokens, dim) shape of the flat column "
                                  f"{self.feature_column!r}; add the schema metadata 'shape' or store nested lists")
        flat = values.to_numpy(zero_copy_only=False)
        if flat.size != rows * math.prod(shape):
            raise DataFormatError(f"{path}: {flat.size} values for {rows} rows do not match shape {shape}; every row "
                                  f"must hold the same (tokens, dim) array: {PARQUET_FORMAT}")
        return flat.reshape(rows, *shape)

    def _row_group(self, shard_id: int, group: int) -> np.ndarray:
        key = (shard_id, group)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        path = self.shards[shard_id]
        try:
            column = self._open(path).read_row_group(group, columns=[self.feature_column]).column(0)
        except (OSError, pa.ArrowException) as exc:
            raise DataFormatError(f"{path}: row group {group} cannot be read ({exc}); expected "
                                  f"{PARQUET_FORMAT}") from None
        decoded = self._decode(column, shard_id)
        self._cache[key] = decoded
        while len(self._cache) > self.cache_row_groups:
            self._cache.popitem(last=False)
        return decoded

    def get(self, key: str) -> np.ndarray:
        if key not in self.index:
            raise DataFormatError(f"image id {key!r}: not in the {len(self.shards)} parquet shard(s) "
                                  f"{[str(p) for p in self.shards[:3]]}{' ...' if len(self.shards) > 3 else ''}; "
                                  f"expected {PARQUET_FORMAT}")
        shard_id, group, offset = self.index[key]
        return _check_array(self._row_group(shard_id, group)[offset], f"{self.shards[shard_id]}[id={key}]",
                            self.dim, PARQUET_FORMAT)

    def export_h5(self, out_dir: str | Path, ids: Iterable[str] | None = None) -> int:
        """Write ``<out_dir>/<id>.h5`` (group ``<id>``, dataset ``features``, float16) for ``ids`` (default all),
        skipping existing files, in shard order; returns the number of files written."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        wanted = set(self.index) if ids is None else set(ids)
        written = 0
        for key, _ in sorted(self.index.items(), key=lambda item: item[1]):
            target = out / f"{key}.h5"
            if key not in wanted or target.exists():
                continue
            with h5py.File(target, "w") as fh:
                fh.create_group(key).create_dataset("features", data=self.get(key).astype(np.float16))
            written += 1
        return written


class NpzVideoFeatureStore:
    """VALUE CLIP-ViT video features: ``<dir>/<vid_name>.npz`` with the array ``features`` (frames, 512)."""

    def __init__(self, paths: str | Path | Iterable[str | Path], dim: int | None = 512, key: str = "features") -> None:
        given = _paths(paths)
        self.dirs = [p for p in given if p.is_dir()]
        if not self.dirs:
            raise DataFormatError(f"no video feature folder found at {[str(p) for p in given]}; expected {NPZ_FORMAT}")
        self.dim, self.key = dim, key

    def __repr__(self) -> str:
        return f"NpzVideoFeatureStore({[str(p) for p in self.dirs]})"

    def _locate(self, key: str) -> Path | None:
        return next((d / f"{key}.npz" for d in self.dirs if (d / f"{key}.npz").is_file()), None)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._locate(key) is not None

    def get(self, key: str) -> np.ndarray:
        path = self._locate(key)
        if path is None:
            raise DataFormatError(f"video {key!r}: no {key}.npz in {[str(p) for p in self.dirs]}; "
                                  f"expected {NPZ_FORMAT}")
        try:
            with np.load(path) as archive:
                if self.key not in archive.files:
                    raise DataFormatError(f"{path}: no array {self.key!r} (has {archive.files}); "
                                          f"expected {NPZ_FORMAT}")
                array = archive[self.key]
        except (OSError, ValueError, EOFError) as exc:
            if isinstance(exc, DataFormatError):
                raise
            raise DataFormatError(f"{path}: cannot be read as .npz ({exc}); expected {NPZ_FORMAT}") from None
        return _check_array(array, str(path), self.dim, NPZ_FORMAT)


def pool_grid(feats: torch.Tensor, size: int | None, where: str = "features") -> torch.Tensor:
    """(L, D) grid features (L = s * s, row-major) -> (size * size, D) by adaptive 2-D max pooling (upstream
    ``Downsample``); ``size`` ``None`` or ``sqrt(L)`` returns the input unchanged."""
    length = feats.shape[0]
    side = math.isqrt(length)
    if size is None or (size == side and side * side == length):
        return feats
    if side * side != length:
        raise DataFormatError(f"{where}: {length} tokens are not a square grid; expected s x s grid features "
                              f"(e.g. 49 = 7 x 7) to pool to {size} x {size}")
    grid = feats.t().reshape(1, feats.shape[1], side, side)
    return F.adaptive_max_pool2d(grid, (size, size)).reshape(feats.shape[1], size * size).t().contiguous()


def resize_frames(feats: torch.Tensor, length: int) -> torch.Tensor:
    """Upstream video ``resize``: (T, D) -> (length, D), zero-padded when shorter, adaptive 1-D max pooling over
    time when longer."""
    frames, dim = feats.shape
    if frames < length:
        return torch.cat([feats, feats.new_zeros(length - frames, dim)], dim=0)
    if frames > length:
        return F.adaptive_max_pool1d(feats.t().unsqueeze(0), length).squeeze(0).t().contiguous()
    return feats

