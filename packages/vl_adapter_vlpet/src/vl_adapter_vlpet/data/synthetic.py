"""A synthetic image-text multitask set written at run time in the real upstream formats (for the demo and tests).

Every synthetic "image" has three attributes, a colour (red, blue, green, yellow), a shape (circle, square,
triangle) and a count (1-3), and a 7 x 7 grid of ``feat_dim``-d features (h5, float16, as the CLIP RN101 files)::

    f[cell] = 2 * [onehot(colour) | onehot(shape) | onehot(count) | 0 ...] + N(0, noise^2)   for every cell

so the answer to every question can be read from the pooled features. Files (``make_synthetic_multitask``)::

    <root>/{COCO,VG,GQA,nlvr}/clip_features/data_clip_RN101_att/<img_id>.h5
    <root>/vqa/karpathy_{train,val,test}.json + v2_mscoco_{train,val}2014_annotations.json (10 answers each)
    <root>/GQA/{train,valid,testdev}.json
    <root>/nlvr/{train,valid,test}.json
    <root>/COCO/dataset_coco.json

VQA asks the colour, the shape or the count ("what color is the object?" -> "red", "how many objects are there?"
-> "2"); 9 of the 10 human answers are right, the 10th is a random other answer (soft labels as LXMERT:
1 answer 0.3, 2 0.6, 3 0.9, 4+ 1.0). GQA asks yes/no questions ("is the object red?"), half of them true, so
answering the majority class scores 50. NLVR2 states a relation of
two images ("both images show circles", "the left image has more objects than the right image") labelled true /
false. COCO captions describe the image ("two red circles", "a picture of two red circles", ...). Every word is in
:data:`WORDS`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

COLOURS = ("red", "blue", "green", "yellow")
SHAPES = ("circle", "square", "triangle")
COUNTS = (1, 2, 3)
NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles"}
SPLITS = ("train", "val", "test")
WORDS = sorted({*COLOURS, *SHAPES, *PLURAL.values(), *NUMBER_WORDS.values(), "1", "2", "3", "yes", "no", "true",
                "false", "what", "color", "is", "the", "object", "shape", "of", "how", "many", "objects", "are",
                "there", "?", "a", "picture", "with", "an", "image", "showing", "both", "images", "show", "left",
                "has", "more", "than", "right", "same", "exactly", "one", "contains", "vqa", "gqa", "gpa", "nlvr",
                "caption", ":", "."})
"""Every word of the synthetic questions, answers, statements, captions and task prompts."""

MIN_FEAT_DIM = len(COLOURS) + len(SHAPES) + len(COUNTS)


def attribute_features(colour: int, shape: int, count: int, rng: np.random.Generator, *, feat_dim: int,
                       grid: int = 7, noise: float = 0.5) -> np.ndarray:
    """(grid * grid, feat_dim) float16 features encoding the attributes (module docstring)."""
    if feat_dim < MIN_FEAT_DIM:
        raise ValueError(f"feat_dim={feat_dim} is too small; expected >= {MIN_FEAT_DIM} (the one-hot blocks)")
    code = np.zeros(feat_dim, dtype=np.float32)
    code[colour] = code[len(COLOURS) + shape] = code[len(COLOURS) + len(SHAPES) + count] = 2.0
    feats = code[None, :] + rng.normal(0.0, noise, size=(grid * grid, feat_dim)).astype(np.float32)
    return feats.astype(np.float16)


def soft_score(count: int) -> float:
    """LXMERT's VQA label score of an answer given by ``count`` of the 10 annotators."""
    return min(1.0, 0.3 * count)


def _write_h5(folder: Path, img_id: str, feats: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(folder / f"{img_id}.h5", "w") as fh:
        fh.create_group(img_id).create_dataset("features", data=feats)


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


class _Images:
    """Draws attributed images and writes their features under one dataset folder."""

    def __init__(self, root: Path, folder: str, rng: np.random.Generator, feat_dim: int, noise: float) -> None:
        self.dir = root / folder / "clip_features" / "data_clip_RN101_att"
        self.rng, self.feat_dim, self.noise = rng, feat_dim, noise

    def make(self, img_id: str) -> tuple[str, int, int]:
        colour, shape, count = (int(self.rng.integers(len(COLOURS))), int(self.rng.integers(len(SHAPES))),
                                int(self.rng.integers(len(COUNTS))))
        _write_h5(self.dir, img_id, attribute_features(colour, shape, count, self.rng, feat_dim=self.feat_dim,
                                                        noise=self.noise))
        return COLOURS[colour], SHAPES[shape], COUNTS[count]


def _vqa_questions(colour: str, shape: str, count: int) -> list[tuple[str, str, str]]:
    return [("what color is the object?", colour, "other"), ("what is the shape of the object?", shape, "other"),
            ("how many objects are there?", str(count), "number")]


def _captions(colour: str, shape: str, count: int) -> list[str]:
    noun = f"{colour} {shape if count == 1 else PLURAL[shape]}"
    phrase = f"{'a' if count == 1 else NUMBER_WORDS[count]} {noun}"
    return [phrase, f"a picture of {phrase}", f"there {'is' if count == 1 else 'are'} {phrase}",
            f"an image showing {phrase}", f"{NUMBER_WORDS[count]} {noun}"]


def _true_or_other(value: str, values: tuple[str, ...], true: bool, rng: np.random.Generator) -> str:
    """``value`` (``true``) or a random one of the other ``values``: alternating makes yes / no balanced."""
    if true:
        return value
    others = [v for v in values if v != value]
    return others[int(rng.integers(len(others)))]


def _nlvr_statement(a: tuple[str, str, int], b: tuple[str, str, int], rng: np.random.Generator) -> tuple[str, bool]:
    kind = int(rng.integers(4))
    if kind == 0:
        shape = a[1] if rng.random() < 0.5 else SHAPES[int(rng.integers(len(SHAPES)))]
        return f"both images show {PLURAL[shape]}.", a[1] == shape and b[1] == shape
    if kind == 1:
        return "the left image has more objects than the right image.", a[2] > b[2]
    if kind == 2:
        return "both images show the same color.", a[0] == b[0]
    colour = a[0] if rng.random() < 0.5 else COLOURS[int(rng.integers(len(COLOURS)))]
    return f"exactly one image contains {colour} objects.", (a[0] == colour) != (b[0] == colour)


def make_synthetic_multitask(root: str | Path, n_images: int = 60, seed: int = 0, feat_dim: int = 2048,
                             noise: float = 0.5, eval_images: int | None = None) -> dict[str, Any]:
    """Write the synthetic set under ``root`` (module docstring): ``n_images`` images per dataset folder, split
    70 / 15 / 15 % into train / val / test; ``eval_images`` sets the val and test sizes instead of the 15 % (larger
    evaluation sets at the same training size). Returns ``{"root": Path, "counts": {task/split: items}}``."""
    if n_images < 7:
        raise ValueError(f"n_images={n_images} is too small; expected >= 7 (at least one image per split)")
    if eval_images is not None and eval_images < 1:
        raise ValueError(f"eval_images={eval_images} is too small; expected >= 1 (or None: 15 % of n_images)")
    root = Path(root)
    rng = np.random.default_rng(seed)
    n_val = max(1, round(0.15 * n_images))
    n_eval = n_val if eval_images is None else eval_images
    sizes = {"train": n_images - 2 * n_val, "val": n_eval, "test": n_eval}
    counts: dict[str, int] = {}
    coco, vg, gqa, nlvr = (_Images(root, f, rng, feat_dim, noise) for f in ("COCO", "VG", "GQA", "nlvr"))

    vqa_files: dict[str, list] = {s: [] for s in SPLITS}
    raw: dict[str, list] = {"train2014": [], "val2014": []}
    karpathy = []
    index = 0
    for split in SPLITS:
        source = "train2014" if split == "train" else "val2014"
        for _ in range(sizes[split]):
            index += 1
            img_id = f"COCO_{source}_{index:012d}"
            colour, shape, count = coco.make(img_id)
            for q, (sent, answer, kind) in enumerate(_vqa_questions(colour, shape, count)):
                qid = index * 10 + q
                other = [a for a in (*COLOURS, *SHAPES, "1", "2", "3") if a != answer][int(rng.integers(9))]
                answers = [answer] * 9 + [other]
                label = {answer: soft_score(9), other: soft_score(1)}
                vqa_files[split].append({"question_id": qid, "img_id": img_id, "sent": sent, "label": label,
                                         "answer_type": kind, "question_type": " ".join(sent.split()[:2])})
                raw[source].append({"question_id": qid, "image_id": index, "question_type": " ".join(sent.split()[:2]),
                                    "answer_type": kind, "multiple_choice_answer": answer,
                                    "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                                                for i, a in enumerate(answers)]})
            karpathy_split = "restval" if split == "train" and index % 5 == 0 else split
            karpathy.append({"filename": f"{img_id}.jpg", "split": karpathy_split, "imgid": index,
                             "sentences": [{"raw": c, "tokens": c.split()} for c in _captions(colour, shape, count)]})
        counts[f"vqa/karpathy_{split}"] = len(vqa_files[split])
        counts[f"caption/karpathy_{split}"] = sizes[split] * (5 if split == "train" else 1)
        _write_json(root / "vqa" / f"karpathy_{split}.json", vqa_files[split])
    for source, anns in raw.items():
        _write_json(root / "vqa" / f"v2_mscoco_{source}_annotations.json", {"annotations": anns})
    _write_json(root / "COCO" / "dataset_coco.json", {"images": karpathy, "dataset": "coco"})

    for split, name in (("train", "train"), ("val", "valid"), ("test", "testdev")):
        images, rows = (gqa if name == "testdev" else vg), []
        for k in range(sizes[split]):
            img_id = f"n{k:06d}" if name == "testdev" else f"{1 if name == 'train' else 2}{k:06d}"
            colour, shape, count = images.make(img_id)
            asked = [_true_or_other(colour, COLOURS, k % 2 == 0, rng), _true_or_other(shape, SHAPES, k % 2 == 1, rng)]
            for q, value in enumerate(asked):
                truth = value in (colour, shape)
                sent = f"is the object {value}?" if value in COLOURS else f"is the object a {value}?"
                rows.append({"question_id": f"{name}{k:05d}{q}", "img_id": img_id, "sent": sent,
                             "label": {"yes" if truth else "no": 1.0}})
        counts[f"gqa/{name}"] = len(rows)
        _write_json(root / "GQA" / f"{name}.json", rows)

    for split, name in (("train", "train"), ("val", "valid"), ("test", "test")):
        rows = []
        for k in range(sizes[split]):
            pair = [nlvr.make(f"{name}-{k}-0-img{i}") for i in range(2)]
            sent, truth = _nlvr_statement(pair[0], pair[1], rng)
            rows.append({"identifier": f"{name}-{k}-0-0", "img0": f"{name}-{k}-0-img0", "img1": f"{name}-{k}-0-img1",
                         "label": int(truth), "sent": sent, "uid": f"nlvr2_{name}_{k}"})
        counts[f"nlvr2/{name}"] = len(rows)
        _write_json(root / "nlvr" / f"{name}.json", rows)
    return {"root": root, "counts": counts}
