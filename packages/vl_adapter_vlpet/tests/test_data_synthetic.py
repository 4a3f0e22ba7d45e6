"""The synthetic multitask set: real formats, every task / split loadable, answers readable from the features."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from data_fixtures import DataCfg, WordTokenizer
from vl_adapter_vlpet.data import build_task_dataset
from vl_adapter_vlpet.data.synthetic import COLOURS, COUNTS, SHAPES, WORDS, make_synthetic_multitask

SPLITS = {"vqa": ("karpathy_train", "karpathy_val", "karpathy_test"), "gqa": ("train", "valid", "testdev"),
          "nlvr2": ("train", "valid", "test"), "caption": ("karpathy_train", "karpathy_val", "karpathy_test")}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_multitask(root, n_images=14, seed=3, feat_dim=16)
    return root


def decode(feats: np.ndarray) -> tuple[str, str, int]:
    """Attributes from the mean feature (the one-hot blocks survive the noise)."""
    mean = feats.astype(np.float32).mean(0)
    c, s = len(COLOURS), len(SHAPES)
    return (COLOURS[int(mean[:c].argmax())], SHAPES[int(mean[c:c + s].argmax())],
            COUNTS[int(mean[c + s:c + s + len(COUNTS)].argmax())])


def test_every_task_and_split_loads(root: Path) -> None:
    tok = WordTokenizer(WORDS)
    for task, splits in SPLITS.items():
        for split in splits:
            ds = build_task_dataset(task, split, DataCfg(str(root)), tok)
            ds.check_features()
            assert ds[0]["vis_feats"].shape == ((72, 16) if task == "nlvr2" else (36, 16))
            for record in ds.records:
                target = record.target
                refs = [target] if isinstance(target, str) else list(target or [])  # answer, label keys, captions
                words = f"{record.text} {record.answer or ''} {' '.join(refs)}".lower()
                unknown = set(words.replace("?", " ").replace(".", " ").split()) - set(WORDS)
                assert not unknown, (task, split, unknown)


def test_answers_can_be_read_from_the_features(root: Path) -> None:
    tok = WordTokenizer(WORDS)
    vqa = build_task_dataset("vqa", "karpathy_val", DataCfg(str(root)), tok)
    for record in vqa.records:
        colour, shape, count = decode(vqa.store.get(record.keys[0]))
        truth = {"color": colour, "shape": shape, "many": str(count)}[next(
            w for w in ("color", "shape", "many") if w in record.text)]
        assert max(record.label, key=record.label.get) == truth
        assert record.target.answers.count(truth) == 9 and record.label[truth] == 1.0
    gqa = build_task_dataset("gqa", "testdev", DataCfg(str(root)), tok)
    for record in gqa.records:
        colour, shape, _ = decode(gqa.store.get(record.keys[0]))
        asked = record.text.rstrip("?").split()[-1]
        assert record.target == ("yes" if asked in (colour, shape) else "no")
    nlvr = build_task_dataset("nlvr2", "train", DataCfg(str(root)), tok)
    for record in nlvr.records:
        (c0, _, n0), (c1, _, n1) = (decode(nlvr.store.get(k)) for k in record.keys)
        if "more objects" in record.text:
            assert record.answer == ("true" if n0 > n1 else "false")
        if "same color" in record.text:
            assert record.answer == ("true" if c0 == c1 else "false")
    cap = build_task_dataset("caption", "karpathy_test", DataCfg(str(root)), tok)
    for record in cap.records:
        colour, _, _ = decode(cap.store.get(record.keys[0]))
        assert all(colour in ref for ref in record.target)


def test_generation_is_seeded_and_real_sized(tmp_path: Path) -> None:
    a = make_synthetic_multitask(tmp_path / "a", n_images=7, seed=5, feat_dim=16)
    b = make_synthetic_multitask(tmp_path / "b", n_images=7, seed=5, feat_dim=16)
    assert a["counts"] == b["counts"] and a["counts"]["vqa/karpathy_train"] == 15
    for rel in ("vqa/karpathy_train.json", "GQA/testdev.json", "nlvr/valid.json", "COCO/dataset_coco.json"):
        assert json.loads((tmp_path / "a" / rel).read_text()) == json.loads((tmp_path / "b" / rel).read_text())
    make_synthetic_multitask(tmp_path / "real", n_images=7, seed=0)
    path = next((tmp_path / "real" / "COCO" / "clip_features" / "data_clip_RN101_att").glob("*.h5"))
    with h5py.File(path, "r") as fh:
        feats = fh[f"{path.stem}/features"]
        assert feats.shape == (49, 2048) and feats.dtype == np.float16
    with pytest.raises(ValueError, match="n_images=3 is too small"):
        make_synthetic_multitask(tmp_path / "c", n_images=3)
    big = make_synthetic_multitask(tmp_path / "d", n_images=7, seed=5, feat_dim=16, eval_images=4)["counts"]
    assert big["vqa/karpathy_train"] == a["counts"]["vqa/karpathy_train"], "training size unchanged"
    assert big["caption/karpathy_test"] == 4 and big["caption/karpathy_val"] == 4
    with pytest.raises(ValueError, match="eval_images=0 is too small"):
        make_synthetic_multitask(tmp_path / "e", n_images=7, eval_images=0)
