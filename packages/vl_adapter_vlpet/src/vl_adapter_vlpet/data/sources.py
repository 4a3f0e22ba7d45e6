"""Where each task's annotations and features live (the upstream ``datasets/`` tree), and the feature store to open.

Upstream layout (HenryHZY/VL-PET@7430cad ``src/*_clip_data.py``, ``src/video/*_data.py``; the HF release
ylsung/VL-Adapter-datasets puts the same annotation files under ``annotations/`` and the features in parquet shards
under ``features/<D>/data_clip_RN101_att/``; both layouts are found under ``data.root``)::

    <root>/vqa/{karpathy_train,karpathy_val,karpathy_test}.json, v2_mscoco_{train,val}2014_annotations.json
    <root>/GQA/{train,valid,testdev}.json
    <root>/nlvr/{train,valid,test}.json
    <root>/COCO/dataset_coco.json
    <root>/{COCO,VG,GQA,nlvr}/clip_features/data_clip_RN101_att/<img_id>.h5
    <root>/video/ann/{tv,how2,yc2}_subtitles.jsonl, ann/<task>/<task>_<split>.jsonl
    <root>/video/vis_features/{tv,how2,yc2}/clip-vit/<vid_name>.npz

Feature sources per task: VQA and captioning read COCO; GQA ``train`` / ``valid`` read VG and ``testdev`` /
``submit`` read GQA; NLVR2 reads nlvr; TVQA / TVC read ``tv``, How2QA ``how2``, YC2C ``yc2``. ``data.feature_paths``
(keys ``coco``, ``vg``, ``gqa``, ``nlvr``, ``video``) replaces a default location with a folder or file (for
``video``: the ``vis_features`` folder, or a folder holding the ``.npz`` files directly).

The data config is read by attribute: ``root``, ``features`` (``h5`` | ``parquet`` | ``npz``), ``feature_paths``,
``task_prompts``, ``gqa_prompt_typo``, ``train_limit``, ``eval_limit`` and, if present, ``pool_size``,
``video_frames``, ``train_answer``, ``vqa_eval`` (missing attributes take the values of :data:`DEFAULTS`), so
``vl_adapter_vlpet.config.DataConfig`` or any object with these attributes works.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vl_adapter_vlpet.data.errors import DataFormatError
from vl_adapter_vlpet.data.features import FeatureStore, H5FeatureStore, NpzVideoFeatureStore, ParquetFeatureStore
from vl_adapter_vlpet.data.tasks import task_spec

FEATURE_VARIANT = "data_clip_RN101_att"
IMAGE_FOLDERS = {"coco": "COCO", "vg": "VG", "gqa": "GQA", "nlvr": "nlvr"}
VIDEO_FOLDERS = {"tvqa": "tv", "tvc": "tv", "how2qa": "how2", "yc2c": "yc2"}
DEFAULTS: dict[str, Any] = {
    "root": "datasets", "features": "h5", "feature_paths": {}, "task_prompts": True, "gqa_prompt_typo": False,
    "train_limit": None, "eval_limit": None,
    # read when present, else these upstream values:
    "pool_size": 6,            # grid side after --downsample (6 x 6 = 36 tokens); None keeps the 49 tokens
    "video_frames": 64,        # --n_boxes of the video scripts
    "train_answer": "sample",  # VQA / GQA training answer: "sample" (upstream) or "most_common"
    "vqa_eval": "raw",         # VQA references: "raw" (official score from the 10 answers) or "label"
}


def option(data_cfg: Any, name: str) -> Any:
    """``data_cfg.<name>``, or its default when the config object has no such attribute."""
    return getattr(data_cfg, name, DEFAULTS[name]) if data_cfg is not None else DEFAULTS[name]


def annotation_path(root: str | Path, *parts: str) -> Path:
    """``root/parts`` (upstream tree) or ``root/annotations/parts`` (HF release tree), whichever exists."""
    root = Path(root)
    for candidate in (root.joinpath(*parts), root.joinpath("annotations", *parts)):
        if candidate.exists():
            return candidate
    return root.joinpath(*parts)


def video_root(data_cfg: Any) -> Path:
    """The upstream ``datasets/video`` folder: ``<root>/video`` if it exists, else ``<root>``."""
    root = Path(option(data_cfg, "root"))
    return root / "video" if (root / "video").is_dir() else root


def image_sources(task: str, split: str) -> list[str]:
    """Feature sources of an image task's split (see the module docstring)."""
    name = task_spec(task).name
    if name == "gqa":
        parts = set(split.split(","))
        sources = (["vg"] if parts & {"train", "valid"} else []) + (["gqa"] if parts & {"testdev", "submit"} else [])
        return sources or ["vg", "gqa"]
    return {"vqa": ["coco"], "caption": ["coco"], "nlvr2": ["nlvr"]}[name]


def feature_location(source: str, data_cfg: Any) -> Path:
    """The folder / file of an image feature source (``data.feature_paths`` or the default under ``data.root``)."""
    custom = option(data_cfg, "feature_paths").get(source)
    if custom:
        return Path(custom)
    root = Path(option(data_cfg, "root"))
    folder = IMAGE_FOLDERS[source]
    if option(data_cfg, "features") == "parquet":
        return root / "features" / folder / FEATURE_VARIANT
    return root / folder / "clip_features" / FEATURE_VARIANT


def video_feature_location(task: str, data_cfg: Any) -> Path:
    """The folder of a video task's ``.npz`` features."""
    folder = VIDEO_FOLDERS[task_spec(task).name]
    custom = option(data_cfg, "feature_paths").get("video")
    if custom:
        base = Path(custom)
        nested = base / folder / "clip-vit"
        return nested if nested.is_dir() or not any(base.glob("*.npz")) else base
    return video_root(data_cfg) / "vis_features" / folder / "clip-vit"


def open_feature_store(task: str, split: str, data_cfg: Any, feat_dim: int | None = None) -> FeatureStore:
    """The feature store of ``task`` / ``split`` as configured (``features``: h5, parquet or npz); ``feat_dim``: the
    feature size every read is checked against (``None``: any)."""
    spec = task_spec(task)
    kind = option(data_cfg, "features")
    if spec.modality == "video":
        return NpzVideoFeatureStore(video_feature_location(spec.name, data_cfg), dim=feat_dim)
    locations = [feature_location(s, data_cfg) for s in image_sources(spec.name, split)]
    if kind == "h5":
        return H5FeatureStore(locations, dim=feat_dim)
    if kind == "parquet":
        return ParquetFeatureStore(locations, dim=feat_dim)
    raise DataFormatError(f"data.features={kind!r} cannot serve the image task {spec.name!r}; expected 'h5' or "
                          "'parquet'")
