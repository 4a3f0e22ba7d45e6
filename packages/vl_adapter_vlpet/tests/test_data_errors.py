"""Every missing or malformed data file raises DataFormatError naming the file, the entry / id / key and what was
expected."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import DataCfg, Tree, WordTokenizer, feature_dir, write_h5, write_image_tree, write_json
from vl_adapter_vlpet.data import DataFormatError, build_task_dataset, collate, task_spec


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return write_image_tree(tmp_path / "datasets")


@pytest.fixture(scope="module")
def tok() -> WordTokenizer:
    return WordTokenizer()


def build(tree: Tree, tok: WordTokenizer, task: str, split: str, **cfg: object):
    return build_task_dataset(task, split, DataCfg(str(tree.root), **cfg), tok)


def test_missing_annotation_file(tree: Tree, tok: WordTokenizer) -> None:
    with pytest.raises(DataFormatError, match=r"vqa/karpathy_minival.json: file not found; expected a JSON list of "
                                              r"\{question_id, img_id, sent, label"):
        build(tree, tok, "vqa", "karpathy_minival")
    (tree.root / "COCO" / "dataset_coco.json").unlink()
    with pytest.raises(DataFormatError, match=r"COCO/dataset_coco.json: file not found; expected Karpathy's"):
        build(tree, tok, "caption", "karpathy_test")


@pytest.mark.parametrize("task,split,path,content,message", [
    ("vqa", "karpathy_train", "vqa/karpathy_train.json", "{not json", r"karpathy_train.json: cannot be read as JSON"),
    ("vqa", "karpathy_train", "vqa/karpathy_train.json", {"question_id": 1}, r"top level is dict, not a list"),
    ("vqa", "karpathy_train", "vqa/karpathy_train.json", [{"question_id": 1, "sent": "what"}],
     r"karpathy_train.json, entry 0: missing key\(s\) \['img_id'\]"),
    ("vqa", "karpathy_train", "vqa/karpathy_train.json", [{"question_id": 1, "img_id": "x"}],
     r"entry 0: no question text \('sent' or 'question'\)"),
    ("vqa", "karpathy_train", "vqa/karpathy_train.json",
     [{"question_id": 1, "img_id": "x", "sent": "q", "label": ["a"]}], r"entry 0: label \['a'\] is not a \{answer"),
    ("gqa", "testdev", "GQA/testdev.json", [{"question_id": "1", "img_id": "x", "label": {"a": 1}}],
     r"GQA/testdev.json, entry 0: missing key\(s\) \['sent'\]"),
    ("nlvr2", "test", "nlvr/test.json", [{"uid": "u", "img0": "a", "img1": "b", "sent": "s", "label": 2}],
     r"nlvr/test.json, entry 0: label 2 is not 0 or 1"),
    ("caption", "karpathy_val", "COCO/dataset_coco.json", {"images": [{"filename": "a.jpg", "split": "dev",
                                                                       "sentences": []}]},
     r"dataset_coco.json, image 0: split 'dev'; expected one of \['restval', 'test', 'train', 'val'\]"),
    ("caption", "karpathy_val", "COCO/dataset_coco.json", {"imgs": []}, r"dataset_coco.json: no 'images' list"),
])
def test_malformed_annotations(tree: Tree, tok: WordTokenizer, task: str, split: str, path: str, content: object,
                               message: str) -> None:
    target = tree.root / path
    if isinstance(content, str):
        target.write_text(content)
    else:
        write_json(target, content)
    with pytest.raises(DataFormatError, match=message) as info:
        build(tree, tok, task, split)
    assert str(target) in str(info.value)


def test_vqa_raw_answers_missing(tree: Tree, tok: WordTokenizer) -> None:
    anns = tree.root / "vqa" / "v2_mscoco_val2014_annotations.json"
    data = json.loads(anns.read_text())
    data["annotations"] = [a for a in data["annotations"] if a["question_id"] != 3002]
    anns.write_text(json.dumps(data))
    with pytest.raises(DataFormatError, match=r"karpathy_test.json, entry 1: question_id 3002 is not in"):
        build(tree, tok, "vqa", "karpathy_test")
    for name in ("train2014", "val2014"):
        (tree.root / "vqa" / f"v2_mscoco_{name}_annotations.json").unlink()
    with pytest.raises(DataFormatError, match=r"none of \['v2_mscoco_train2014_annotations.json', .*vqa_eval=label"):
        build(tree, tok, "vqa", "karpathy_test")
    assert len(build(tree, tok, "vqa", "karpathy_test", vqa_eval="label")) == 2  # label scoring needs no raw file
    with pytest.raises(DataFormatError, match=r"data.vqa_eval='official' is not allowed"):
        build(tree, tok, "vqa", "karpathy_test", vqa_eval="official")


def test_missing_and_malformed_features(tree: Tree, tok: WordTokenizer) -> None:
    coco = feature_dir(tree.root, "COCO")
    (coco / "COCO_train2014_000000000002.h5").unlink()
    ds = build(tree, tok, "vqa", "karpathy_train")
    with pytest.raises(DataFormatError, match=r"1 feature id\(s\) missing .*COCO_train2014_000000000002"):
        ds.check_features()
    with pytest.raises(DataFormatError, match=r"image id 'COCO_train2014_000000000002': no features in"):
        ds[1]
    write_h5(coco, "COCO_train2014_000000000002", np.zeros((50, 16), dtype=np.float16))
    with pytest.raises(DataFormatError, match=r"vqa/karpathy_train image 'COCO_train2014_000000000002': 50 tokens "
                                              r"are not a square grid"):
        ds[1]
    ds.check_features()  # present again
    shutil.rmtree(feature_dir(tree.root, "nlvr"))
    with pytest.raises(DataFormatError, match=r"no feature folder or file found .*nlvr/clip_features"):
        build(tree, tok, "nlvr2", "train")


def test_feature_paths_override_and_parquet_layout(tree: Tree, tok: WordTokenizer, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere"
    shutil.move(feature_dir(tree.root, "COCO"), moved)
    ds = build(tree, tok, "caption", "karpathy_test", feature_paths={"coco": str(moved)})
    assert ds[0]["vis_feats"].shape == (36, 16)
    with pytest.raises(DataFormatError, match=r"no parquet shard found at .*features/COCO/data_clip_RN101_att"):
        build(tree, tok, "caption", "karpathy_test", features="parquet")


def test_duplicate_ids_unknown_task_and_mixed_batches(tree: Tree, tok: WordTokenizer) -> None:
    rows = json.loads((tree.root / "vqa" / "karpathy_val.json").read_text())
    write_json(tree.root / "vqa" / "karpathy_val.json", rows + rows)
    with pytest.raises(DataFormatError, match=r"vqa/karpathy_val: id '2001' occurs more than once"):
        build(tree, tok, "vqa", "karpathy_val")
    with pytest.raises(DataFormatError, match=r"task 'okvqa' is unknown; expected one of"):
        task_spec("okvqa")
    vqa, nlvr = build(tree, tok, "vqa", "karpathy_train"), build(tree, tok, "nlvr2", "train")
    with pytest.raises(DataFormatError, match=r"visual feature shapes \[\(36, 16\), \(72, 16\)\]"):
        collate("vqa", [vqa[0], nlvr[0]], tok)
