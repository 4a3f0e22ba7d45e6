"""Tiny fixture trees in the exact upstream formats, written into a temporary folder (import from any test).

    from data_fixtures import write_image_tree, write_video_tree, WordTokenizer
    tree = write_image_tree(tmp_path)          # tree.root is a datasets/ folder; tree.features[img_id] the arrays
    cfg = DataCfg(root=str(tree.root))         # any object with the data attributes

Image tree (upstream HenryHZY/VL-PET@7430cad ``src/*_clip_data.py`` layout): 7 x 7 x ``feat_dim`` float16 features in
``{COCO,VG,GQA,nlvr}/clip_features/data_clip_RN101_att/<img_id>.h5`` (group ``<img_id>``, dataset ``features``), VQA
Karpathy files + VQA v2 raw annotations, GQA, NLVR2 and Karpathy's ``dataset_coco.json``. Video tree (VALUE, upstream
``src/video/*_data.py``): ``video/ann/*_subtitles.jsonl``, ``video/ann/<task>/<task>_<split>.jsonl`` and
``video/vis_features/{tv,how2,yc2}/clip-vit/<vid_name>.npz``. Every text is in :func:`fixture_texts` (for
``vl_adapter_vlpet.testing.tiny_tokenizer(backbone, dir, texts=fixture_texts())``) and every word in
:data:`FIXTURE_WORDS`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FEAT_DIM = 16
VIDEO_DIM = 8


@dataclass
class Tree:
    root: Path
    features: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class DataCfg:
    """The attributes ``build_task_dataset`` reads (a stand-in for ``vl_adapter_vlpet.config.DataConfig``)."""

    root: str
    features: str = "h5"
    feature_paths: dict = field(default_factory=dict)
    task_prompts: bool = True
    gqa_prompt_typo: bool = False
    train_limit: int | None = None
    eval_limit: int | None = None
    pool_size: int | None = 6
    video_frames: int = 64
    train_answer: str = "sample"
    vqa_eval: str = "raw"


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def grid_features(rng: np.random.Generator, tokens: int = 49, dim: int = FEAT_DIM) -> np.ndarray:
    return rng.normal(size=(tokens, dim)).astype(np.float16)


def write_h5(folder: Path, img_id: str, feats: np.ndarray) -> Path:
    """One upstream per-image file: ``<folder>/<img_id>.h5`` with the dataset ``<img_id>/features``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{img_id}.h5"
    with h5py.File(path, "w") as fh:
        fh.create_group(img_id).create_dataset("features", data=feats)
    return path


def write_parquet_shard(path: Path, features: dict[str, np.ndarray], row_group_size: int | None = None) -> Path:
    """A shard as the HF release writes it (ylsung/VL_adapter ``tools/convert_zip_to_hf.py:features_table``):
    columns ``id`` (string) and ``features`` (``fixed_size_list<fixed_size_list<halffloat>[dim]>[tokens]``), schema
    metadata ``source`` / ``shape`` / ``dtype``."""
    ids = list(features)
    tokens, dim = next(iter(features.values())).shape
    flat = pa.array(np.concatenate([features[i].astype(np.float16).ravel() for i in ids]), type=pa.float16())
    nested = pa.FixedSizeListArray.from_arrays(pa.FixedSizeListArray.from_arrays(flat, dim), tokens)
    table = pa.table({"id": pa.array(ids, type=pa.string()), "features": nested})
    table = table.replace_schema_metadata({"source": "vlt5_dataset/COCO/clip_features/data_clip_RN101_att",
                                           "shape": str((tokens, dim)), "dtype": "float16"})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd", row_group_size=row_group_size)
    return path


def feature_dir(root: Path, folder: str) -> Path:
    return root / folder / "clip_features" / "data_clip_RN101_att"


VQA = {
    "karpathy_train": [
        {"question_id": 1001, "img_id": "COCO_train2014_000000000001", "sent": "what color is the dog?",
         "label": {"black": 1.0, "white": 0.3}, "answer_type": "other", "question_type": "what color"},
        {"question_id": 1002, "img_id": "COCO_train2014_000000000002", "sent": "how many cats are there?",
         "label": {"2": 0.9, "3": 0.6}, "answer_type": "number", "question_type": "how many"},
    ],
    "karpathy_val": [
        {"question_id": 2001, "img_id": "COCO_val2014_000000000003", "sent": "is the cat on the table?",
         "label": {"yes": 1.0}, "answer_type": "yes/no", "question_type": "is the"},
    ],
    "karpathy_test": [
        {"question_id": 3001, "img_id": "COCO_val2014_000000000004", "sent": "how many dogs are there?",
         "label": {"2": 0.9, "3": 0.3}, "answer_type": "number", "question_type": "how many"},
        {"question_id": 3002, "img_id": "COCO_val2014_000000000003", "sent": "what color is the cat?",
         "label": {"red": 1.0}, "answer_type": "other", "question_type": "what color"},
    ],
}
VQA_RAW = {  # question_id -> 10 raw human answers (VQA v2 annotation files)
    1001: ["black"] * 8 + ["white", "black"], 1002: ["2"] * 3 + ["3"] * 2 + ["two"] * 5, 2001: ["yes"] * 10,
    3001: ["2", "2", "2", "3", "two", "2", "2", "3", "2", "2"], 3002: ["red"] * 10,
}
GQA = {
    "train": [{"question_id": "201", "img_id": "2375429", "sent": "is the dog sitting?", "label": {"yes": 1.0}}],
    "valid": [{"question_id": "202", "img_id": "2375430", "sent": "is the cat standing?", "label": {"no": 1.0}}],
    "testdev": [{"question_id": "203", "img_id": "n161313", "sent": "what color is the table?",
                 "label": {"white": 1.0}}],
}
NLVR = {
    split: [{"identifier": f"{split}-{k}-0-{j}", "img0": f"{split}-{k}-0-img0", "img1": f"{split}-{k}-0-img1",
             "label": (k + j) % 2, "sent": "the left image has more dogs than the right image.",
             "uid": f"nlvr2_{split}_{2 * k + j}"} for k in range(2) for j in range(2)]
    for split in ("train", "valid", "test")
}
COCO_IMAGES = [
    ("COCO_train2014_000000000001.jpg", "train", ["A dog sitting in the grass.", "A black dog in grass"]),
    ("COCO_train2014_000000000002.jpg", "restval", ["Two cats on a sofa", "A cat sleeps on a sofa."]),
    ("COCO_val2014_000000000003.jpg", "val", ["A cat on the table", "a white cat on a table"]),
    ("COCO_val2014_000000000004.jpg", "test", ["Two dogs playing", "two dogs in the park"]),
]


def write_image_tree(root: Path, feat_dim: int = FEAT_DIM, seed: int = 0) -> Tree:
    """The image-text fixture tree under ``root`` (module docstring); returns the features written by id."""
    rng = np.random.default_rng(seed)
    tree = Tree(root)
    for split, rows in VQA.items():
        write_json(root / "vqa" / f"{split}.json", rows)
    anns = {"train2014": [], "val2014": []}
    for rows in VQA.values():
        for row in rows:
            source = "train2014" if "train2014" in row["img_id"] else "val2014"
            anns[source].append({"question_id": row["question_id"], "question_type": row["question_type"],
                                 "answer_type": row["answer_type"],
                                 "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                                             for i, a in enumerate(VQA_RAW[row["question_id"]])]})
    for source, rows in anns.items():
        write_json(root / "vqa" / f"v2_mscoco_{source}_annotations.json", {"annotations": rows})
    for split, rows in GQA.items():
        write_json(root / "GQA" / f"{split}.json", rows)
    for split, rows in NLVR.items():
        write_json(root / "nlvr" / f"{split}.json", rows)
    write_json(root / "COCO" / "dataset_coco.json", {"images": [
        {"filename": f, "split": s, "sentences": [{"raw": c, "tokens": c.lower().split()} for c in caps]}
        for f, s, caps in COCO_IMAGES], "dataset": "coco"})
    images = {"COCO": [f.rsplit(".", 1)[0] for f, _, _ in COCO_IMAGES],
              "VG": [r["img_id"] for s in ("train", "valid") for r in GQA[s]],
              "GQA": [r["img_id"] for r in GQA["testdev"]],
              "nlvr": sorted({r[k] for rows in NLVR.values() for r in rows for k in ("img0", "img1")})}
    for folder, ids in images.items():
        for img_id in ids:
            tree.features[img_id] = grid_features(rng, dim=feat_dim)
            write_h5(feature_dir(root, folder), img_id, tree.features[img_id])
    return tree


SUBTITLES = {
    "tv": [{"vid_name": "friends_s01e01_seg01_clip_00", "sub": [{"text": " hello ", "start": 0.1, "end": 1.0},
                                                                {"text": "where is he?", "start": 1.0, "end": 2.0}]},
           {"vid_name": "friends_s01e01_seg01_clip_01", "sub": [{"text": "he is home.", "start": 0.0, "end": 1.5}]}],
    "how2": [{"vid_name": "how2_v1", "sub": [{"text": "she cooks eggs", "start": 0.0, "end": 3.0}]}],
    "yc2": [{"vid_name": "yc2_v1", "sub": [{"text": "adds salt", "start": 0.0, "end": 2.0}]}],
}
TVQA = [{"qid": 7, "vid_name": "friends_s01e01_seg01_clip_00", "show_name": "Friends", "q": "Where is he?",
         "a0": "home.", "a1": "park", "a2": "school", "a3": "shop", "a4": "beach", "answer_idx": 0, "ts": "0.5-1.8"},
        {"qid": 8, "vid_name": "friends_s01e01_seg01_clip_01", "show_name": "Friends", "q": "Where is he?",
         "a0": "park", "a1": "home", "a2": "school", "a3": "shop", "a4": "beach", "answer_idx": 1, "ts": "0.0-1.5"}]
HOW2QA = [{"qid": "h1", "vid_name": "how2_v1", "q": "what she cooks?", "a0": "eggs", "a1": "salt", "a2": "dog",
           "a3": "cat", "answer_idx": 0, "ts": "0-3"}]
TVC = [{"vid_name": "friends_s01e01_seg01_clip_00", "duration": 2.0, "ts": [0.1, 1.9], "clip_id": 11,
        "descs": [{"desc": "he is home.", "desc_id": 111, "type": "v"},
                  {"desc": "a man is home", "desc_id": 112, "type": "t"}]}]
YC2C = [{"vid_name": "yc2_v1", "duration": 2.0, "clip_id": 21, "descs": [{"desc": "she adds salt", "desc_id": 211}]}]
VIDEO_FRAMES = {"friends_s01e01_seg01_clip_00": 3, "friends_s01e01_seg01_clip_01": 80, "how2_v1": 64, "yc2_v1": 5}


def write_video_tree(root: Path, dim: int = VIDEO_DIM, seed: int = 0) -> Tree:
    """The VALUE fixture tree under ``root / "video"``: TVQA / TVC on two ``tv`` clips (3 and 80 frames), How2QA and
    YC2C on one clip each; every split file (``train`` / ``val`` names as upstream) holds the same rows."""
    rng = np.random.default_rng(seed)
    video = root / "video"
    tree = Tree(root)
    for folder, rows in SUBTITLES.items():
        write_jsonl(video / "ann" / f"{folder}_subtitles.jsonl", rows)
    splits = {"tvqa": ("train", "val"), "how2qa": ("train_release", "val_release"),
              "tvc": ("train_release", "val_release"), "yc2c": ("train_release", "val_release")}
    data = {"tvqa": TVQA, "how2qa": HOW2QA, "tvc": TVC, "yc2c": YC2C}
    for task, names in splits.items():
        for name in names:
            write_jsonl(video / "ann" / task / f"{task}_{name}.jsonl", data[task])
    write_jsonl(video / "ann" / "tvc" / "tvc_test_release.jsonl",
                [{k: v for k, v in TVC[0].items() if k != "descs"}])
    for vid, frames in VIDEO_FRAMES.items():
        folder = {"how2": "how2", "yc2": "yc2"}.get(vid.split("_")[0], "tv")
        out = video / "vis_features" / folder / "clip-vit"
        out.mkdir(parents=True, exist_ok=True)
        tree.features[vid] = rng.normal(size=(frames, dim)).astype(np.float32)
        np.savez(out / f"{vid}.npz", features=tree.features[vid])
    return tree


def fixture_texts() -> list[str]:
    """Every text of the fixture trees (questions, answers, statements, captions, subtitles, choices, prompts)."""
    texts = ["vqa: gqa: gpa: nlvr: caption: tvqa: how2qa: tvc: yc2c: true false [Subs] [Q] [TS] [Choices]",
             "a0 a1 a2 a3 a4 ( ) - . ? : 0 1 2 3 4 5 6 7 8 9"]
    for rows in (*VQA.values(), *GQA.values()):
        for r in rows:
            texts += [r["sent"], *r["label"]]
    texts += [a for answers in VQA_RAW.values() for a in answers]
    texts += [r["sent"] for rows in NLVR.values() for r in rows]
    texts += [c for _, _, caps in COCO_IMAGES for c in caps]
    texts += [t["text"] for rows in SUBTITLES.values() for r in rows for t in r["sub"]]
    for row in (*TVQA, *HOW2QA):
        texts += [row["q"], *(row[f"a{i}"] for i in range(5) if f"a{i}" in row)]
    texts += [d["desc"] for row in (*TVC, *YC2C) for d in row["descs"]]
    return texts


FIXTURE_WORDS = sorted({w for text in fixture_texts() for w in text.replace("?", " ? ").replace(".", " . ").split()})
"""The words of :func:`fixture_texts` (whitespace split, ``?`` / ``.`` separated), for word-level test tokenizers."""


class WordTokenizer:
    """A whitespace tokenizer with BART's layout of special tokens (``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3):
    ``encode`` adds ``<s> ... </s>`` and truncates like a transformers tokenizer (``</s>`` kept). For data tests that
    need no model."""

    def __init__(self, words: list[str] | None = None) -> None:
        self.vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
        for w in words or FIXTURE_WORDS:
            self.vocab.setdefault(w, len(self.vocab))
        self.pad_token_id, self.bos_token_id, self.eos_token_id, self.unk_token_id = 1, 0, 2, 3

    def tokenize(self, text: str) -> list[str]:
        return text.replace("?", " ?").replace(".", " .").split()

    def encode(self, text: str, max_length: int | None = None, truncation: bool = False) -> list[int]:
        ids = [self.vocab.get(w, self.unk_token_id) for w in self.tokenize(text)]
        if truncation and max_length is not None:
            ids = ids[: max_length - 2]
        return [self.bos_token_id, *ids, self.eos_token_id]
