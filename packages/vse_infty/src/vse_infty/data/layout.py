"""The upstream VSE-infty data layout (Flickr30K, MS-COCO Karpathy splits) and its validating readers.

One dataset folder per dataset (upstream ``--data_path``, e.g. ``data/f30k``), as in the upstream README and
woodfrog/vse_infty@47fbb71f37:lib/datasets/image_caption.py (RawImageDataset, PrecompRegionDataset)::

    data/f30k/                              data/coco/
      precomp/{split}_caps.txt                precomp/{split}_caps.txt
      precomp/{split}_ids.txt                 precomp/{split}_ids.txt
      precomp/{split}_ims.npy  (precomp)      precomp/{split}_ims.npy  (precomp)
      id_mapping.json                         id_mapping.json
      flickr30k-images/<file>.jpg             images/{train2014,val2014}/<file>.jpg

* ``{split}_caps.txt``: one caption per line, 5 per image, image-major: caption ``j`` of image ``i`` is line
  ``5 * i + j`` (upstream ``img_index = index // im_div`` with ``im_div = 5``).
* ``{split}_ids.txt``: one integer id per line, either one per image (SCAN's Flickr30K files) or one per caption
  with every image's id repeated on its 5 lines (SCAN's COCO files); upstream accepts both through
  ``im_div = 5 if len(ids) != len(captions) else 1``.
* ``id_mapping.json``: ``{"<id>": "<path relative to the image folder>"}`` (Flickr30K: the image index ->
  ``1000092795.jpg``; COCO: the COCO id -> ``val2014/COCO_val2014_000000391895.jpg``).
* ``{split}_ims.npy``: precomputed BUTD region features, ``(n_images, 36, 2048)`` float (SCAN), read memory-mapped.

Split names: Flickr30K ``train`` (29,000 images), ``dev`` (1,014), ``test`` (1,000); COCO ``train`` (113,287),
``dev`` (5,000), ``test`` (the first 1,000 of the test images) and ``testall`` (the 5,000 test images, evaluated as
5 folds of 1K and as 5K: upstream eval.py ``evalrank(split='testall', fold5=True/False)``). Upstream validates on
the first 5,000 captions (1,000 images) of ``dev`` only (``if data_split == 'dev': self.length = 5000``);
:func:`read_split` does the same unless ``upstream_dev_limit=False``.

Every problem raises :class:`DataFormatError` naming the path and the expected format.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CAPTIONS_PER_IMAGE = 5
DATASETS = ("f30k", "coco")
IMAGE_SOURCES = ("backbone", "precomp")
SPLITS: dict[str, tuple[str, ...]] = {"f30k": ("train", "dev", "test"), "coco": ("train", "dev", "test", "testall")}
IMAGE_DIRS = {"f30k": "flickr30k-images", "coco": "images"}
UPSTREAM_DEV_IMAGES = 1000
"""Upstream validates on the first 5,000 dev captions = 1,000 images (image_caption.py ``self.length = 5000``)."""

CAPS_FORMAT = "a UTF-8 text file with one caption per line, 5 consecutive lines per image"
IDS_FORMAT = ("a text file with one integer image id per line, one line per image or one per caption (the image's "
              "id on each of its 5 lines)")
MAPPING_FORMAT = 'a JSON object mapping each image id (a string) to an image file name, e.g. {"0": "1000092795.jpg"}'
IMS_FORMAT = "a .npy array of precomputed region features, shape (n_images, n_regions, feature_dim)"


class DataFormatError(ValueError):
    """A dataset file or folder is missing or malformed (the message names the path and the expected format)."""


@dataclass
class SplitData:
    """One split: captions (image-major, 5 per image) and the images as file paths or a feature array.

    ``captions[5 * i + j]`` is caption ``j`` of image ``i``; ``image_ids[i]`` its id; ``image_paths[i]`` its file
    (``image_source == "backbone"``) or ``features[i]`` its ``(n_regions, feature_dim)`` regions (``"precomp"``).
    """

    dataset: str
    split: str
    root: Path
    image_source: str
    captions: list[str]
    image_ids: list[int]
    image_paths: list[Path] | None = None
    features: np.ndarray | None = None
    captions_per_image: int = field(default=CAPTIONS_PER_IMAGE)

    @property
    def n_images(self) -> int:
        return len(self.image_ids)

    @property
    def n_captions(self) -> int:
        return len(self.captions)

    def image_of_caption(self, caption_index: int) -> int:
        return caption_index // self.captions_per_image

    def head(self, n_images: int) -> SplitData:
        """The first ``n_images`` images and their captions (features stay memory-mapped)."""
        if n_images >= self.n_images:
            return self
        if n_images <= 0:
            raise ValueError(f"{self.root} {self.split}: cannot keep {n_images} images; expected a positive count")
        k = n_images * self.captions_per_image
        return SplitData(self.dataset, self.split, self.root, self.image_source, self.captions[:k],
                         self.image_ids[:n_images],
                         self.image_paths[:n_images] if self.image_paths is not None else None,
                         self.features[:n_images] if self.features is not None else None, self.captions_per_image)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; expected one of {list(choices)}")


def _read_lines(path: Path, expected: str) -> list[str]:
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found; expected {expected}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"{path}: cannot be read as UTF-8 text ({exc}); expected {expected}") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DataFormatError(f"{path}: the file is empty (an empty split); expected {expected}")
    return lines


def read_captions(path: str | Path, captions_per_image: int = CAPTIONS_PER_IMAGE) -> list[str]:
    """Captions of ``{split}_caps.txt`` (stripped); their count must be a multiple of ``captions_per_image``."""
    path = Path(path)
    captions = [line.strip() for line in _read_lines(path, CAPS_FORMAT)]
    for lineno, caption in enumerate(captions, start=1):
        if not caption:
            raise DataFormatError(f"{path}, line {lineno}: empty caption (it would shift every later caption to "
                                  f"the wrong image); expected {CAPS_FORMAT}")
    if len(captions) % captions_per_image:
        raise DataFormatError(f"{path}: {len(captions)} captions is not a multiple of {captions_per_image}; "
                              f"expected {CAPS_FORMAT}")
    return captions


def read_ids(path: str | Path, n_images: int, captions_per_image: int = CAPTIONS_PER_IMAGE) -> list[int]:
    """One id per image from ``{split}_ids.txt`` (one line per image, or one per caption repeated per image)."""
    path = Path(path)
    ids: list[int] = []
    for lineno, line in enumerate(_read_lines(path, IDS_FORMAT), start=1):
        try:
            ids.append(int(line.strip()))
        except ValueError:
            raise DataFormatError(f"{path}, line {lineno}: {line.strip()!r} is not an integer id; "
                                  f"expected {IDS_FORMAT}") from None
    if len(ids) == n_images:
        return ids
    if len(ids) == n_images * captions_per_image:
        per_image = ids[::captions_per_image]
        for i, image_id in enumerate(per_image):
            group = ids[i * captions_per_image:(i + 1) * captions_per_image]
            if any(x != image_id for x in group):
                raise DataFormatError(f"{path}, lines {i * captions_per_image + 1}-{(i + 1) * captions_per_image}: "
                                      f"ids {group} differ within one image's {captions_per_image} captions; "
                                      f"expected {IDS_FORMAT}")
        return per_image
    raise DataFormatError(f"{path}: {len(ids)} ids for {n_images} images ({n_images * captions_per_image} "
                          f"captions); expected {n_images} or {n_images * captions_per_image} lines: {IDS_FORMAT}")


def read_id_mapping(path: str | Path) -> dict[str, str]:
    """``id_mapping.json``: image id (string) -> file name relative to the image folder."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found; expected {MAPPING_FORMAT}")
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataFormatError(f"{path}: not valid JSON ({exc}); expected {MAPPING_FORMAT}") from None
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise DataFormatError(f"{path}: not an object of strings; expected {MAPPING_FORMAT}")
    return mapping


def image_paths_for(ids: list[int], mapping: dict[str, str], image_dir: Path, mapping_path: Path,
                    check_files: bool = True) -> list[Path]:
    """Image file of every id (upstream ``os.path.join(image_base, id_to_path[str(image_id)])``)."""
    missing = [i for i in ids if str(i) not in mapping]
    if missing:
        raise DataFormatError(f"{mapping_path}: {len(missing)} image id(s) not in the mapping, e.g. "
                              f"{missing[:5]}; expected {MAPPING_FORMAT} with every id of the split")
    if not image_dir.is_dir():
        raise DataFormatError(f"{image_dir}: image folder not found; expected the raw images there (the files "
                              f"named in {mapping_path})")
    paths = [image_dir / mapping[str(i)] for i in ids]
    if check_files:
        absent = [p for p in paths if not p.is_file()]
        if absent:
            raise DataFormatError(f"{absent[0]}: image file not found ({len(absent)} of {len(paths)} missing); "
                                  f"expected the file named by {mapping_path} for every image of the split")
    return paths


def load_features(path: str | Path, n_images: int) -> np.ndarray:
    """``{split}_ims.npy`` memory-mapped, checked to be ``(n_images, n_regions, feature_dim)``."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found; expected {IMS_FORMAT}")
    try:
        features = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataFormatError(f"{path}: cannot be read as a .npy array ({exc}); expected {IMS_FORMAT}") from None
    if features.ndim != 3:
        raise DataFormatError(f"{path}: array of shape {tuple(features.shape)} has {features.ndim} dimension(s); "
                              f"expected {IMS_FORMAT}")
    if features.shape[0] != n_images:
        raise DataFormatError(f"{path}: {features.shape[0]} feature rows for {n_images} images (from the captions "
                              f"file); expected {IMS_FORMAT}")
    if not np.issubdtype(features.dtype, np.floating):
        raise DataFormatError(f"{path}: dtype {features.dtype}; expected {IMS_FORMAT} of a float dtype")
    return features


def read_split(root: str | Path, dataset: str, split: str, image_source: str = "backbone", *,
               max_images: int | None = None, upstream_dev_limit: bool = True, check_images: bool = True,
               captions_per_image: int = CAPTIONS_PER_IMAGE) -> SplitData:
    """Read and validate split ``split`` of the dataset folder ``root`` (upstream ``--data_path``).

    ``image_source="backbone"`` reads raw images (``{split}_ids.txt`` + ``id_mapping.json`` + the image folder);
    ``"precomp"`` reads ``{split}_ims.npy`` (ids from ``{split}_ids.txt`` when present, else ``0..n-1``).
    ``dev`` keeps its first 1,000 images as upstream unless ``upstream_dev_limit=False``; ``max_images`` keeps the
    first images of any split. ``check_images=False`` skips the per-file existence check.
    """
    _check_choice("dataset", dataset, DATASETS)
    _check_choice("image_source", image_source, IMAGE_SOURCES)
    root = Path(root)
    if split not in SPLITS[dataset]:
        raise DataFormatError(f"{root}: unknown {dataset} split {split!r}; expected one of {list(SPLITS[dataset])}")
    if not root.is_dir():
        raise DataFormatError(f"{root}: dataset folder not found; expected the upstream layout with precomp/"
                              f"{{split}}_caps.txt, id_mapping.json and {IMAGE_DIRS[dataset]}/")
    precomp = root / "precomp"
    if not precomp.is_dir():
        raise DataFormatError(f"{precomp}: folder not found; expected {split}_caps.txt and {split}_ids.txt there")
    captions = read_captions(precomp / f"{split}_caps.txt", captions_per_image)
    n_images = len(captions) // captions_per_image
    ids_path = precomp / f"{split}_ids.txt"
    data = SplitData(dataset, split, root, image_source, captions, list(range(n_images)),
                     captions_per_image=captions_per_image)
    if image_source == "backbone" or ids_path.exists():
        data.image_ids = read_ids(ids_path, n_images, captions_per_image)
    if image_source == "backbone":
        mapping_path = root / "id_mapping.json"
        data.image_paths = image_paths_for(data.image_ids, read_id_mapping(mapping_path), root / IMAGE_DIRS[dataset],
                                           mapping_path, check_files=check_images)
    else:
        data.features = load_features(precomp / f"{split}_ims.npy", n_images)
    limit = max_images
    if split == "dev" and upstream_dev_limit and data.n_images > UPSTREAM_DEV_IMAGES:
        log.info("%s dev: validating on the first %d of %d images, as upstream", dataset, UPSTREAM_DEV_IMAGES,
                 data.n_images)
        limit = UPSTREAM_DEV_IMAGES if limit is None else min(limit, UPSTREAM_DEV_IMAGES)
    return data.head(limit) if limit is not None else data
