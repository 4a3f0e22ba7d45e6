"""Image-text datasets on upstream-format fixture files: VQA, GQA, NLVR2, COCO captioning, and batching."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import VQA_RAW, DataCfg, Tree, WordTokenizer, write_image_tree, write_parquet_shard
from vl_adapter_vlpet.data import VQATarget, build_task_dataset, collate, pool_grid


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    return write_image_tree(tmp_path_factory.mktemp("datasets"))


@pytest.fixture(scope="module")
def tok() -> WordTokenizer:
    return WordTokenizer()


def pooled(tree: Tree, img_id: str) -> torch.Tensor:
    return pool_grid(torch.from_numpy(tree.features[img_id].astype(np.float32)), 6)


def test_vqa_item_prompt_features_and_reference(tree: Tree, tok: WordTokenizer) -> None:
    ds = build_task_dataset("vqa", "karpathy_train", DataCfg(str(tree.root)), tok)
    item = ds[0]
    assert item["id"] == "1001"
    assert item["input_ids"].tolist() == tok.encode("vqa: what color is the dog?")
    assert torch.equal(item["vis_feats"], pooled(tree, "COCO_train2014_000000000001"))
    assert item["vis_pos"].shape == (36, 4) and not item["vis_pos"].any()  # grid features have zero boxes
    assert "img_order_ids" not in item
    assert item["target"] == {"black": 1.0, "white": 0.3}
    assert item["target"].answers is None  # training split: no raw answers loaded


def test_vqa_training_answers_are_drawn_by_score_and_reproducible(tree: Tree, tok: WordTokenizer) -> None:
    ds = build_task_dataset("vqa", "karpathy_train", DataCfg(str(tree.root)), tok, seed=3)
    drawn = []
    for epoch in range(60):
        ds.set_epoch(epoch)
        drawn.append(ds[1]["target_ids"].tolist())
    answers = {tuple(tok.encode("2")): "2", tuple(tok.encode("3")): "3"}
    names = [answers[tuple(d)] for d in drawn]
    assert set(names) == {"2", "3"} and 24 <= names.count("2") <= 48  # p("2") = 0.9 / 1.5 = 0.6
    ds.set_epoch(5)
    first = ds[1]
    assert ds[1]["target_ids"].tolist() == first["target_ids"].tolist()  # same (seed, epoch, index) -> same draw
    assert first["score"] == {"2": 0.9, "3": 0.6}[answers[tuple(first["target_ids"].tolist())]]
    most = build_task_dataset("vqa", "karpathy_train", DataCfg(str(tree.root), train_answer="most_common"), tok)
    for epoch in range(5):
        most.set_epoch(epoch)
        assert most[1]["target_ids"].tolist() == tok.encode("2") and most[1]["score"] == 0.9


def test_vqa_evaluation_split_has_raw_answers_and_argmax_target(tree: Tree, tok: WordTokenizer) -> None:
    ds = build_task_dataset("vqa", "karpathy_test", DataCfg(str(tree.root)), tok)
    assert not ds.train
    refs = ds.references()
    assert list(refs) == ["3001", "3002"]
    assert refs["3001"].answers == tuple(VQA_RAW[3001]) and refs["3001"] == {"2": 0.9, "3": 0.3}
    copy = pickle.loads(pickle.dumps(refs["3001"]))  # DataLoader workers / DDP gathers keep the raw answers
    assert isinstance(copy, VQATarget) and copy.answers == refs["3001"].answers
    assert ds[0]["target_ids"].tolist() == tok.encode("2")
    label_only = build_task_dataset("vqa", "karpathy_test", DataCfg(str(tree.root), vqa_eval="label"), tok)
    assert label_only.references()["3001"].answers is None


def test_gqa_reads_vg_for_train_and_gqa_for_testdev(tree: Tree, tok: WordTokenizer) -> None:
    cfg = DataCfg(str(tree.root))
    train = build_task_dataset("gqa", "train,valid", cfg, tok)
    assert [r.id for r in train.records] == ["201", "202"] and train.train
    assert torch.equal(train[1]["vis_feats"], pooled(tree, "2375430"))
    assert train[1]["input_ids"].tolist() == tok.encode("gqa: is the cat standing?")
    assert train[1]["target_ids"].tolist() == tok.encode("no")
    test = build_task_dataset("gqa", "testdev", cfg, tok)
    assert torch.equal(test[0]["vis_feats"], pooled(tree, "n161313")) and test.references() == {"203": "white"}
    typo = build_task_dataset("gqa", "testdev", DataCfg(str(tree.root), gqa_prompt_typo=True), tok)
    assert typo[0]["input_ids"].tolist() == tok.encode("gpa: what color is the table?")


def test_nlvr2_concatenates_two_pooled_images_with_order_ids(tree: Tree, tok: WordTokenizer) -> None:
    ds = build_task_dataset("nlvr2", "valid", DataCfg(str(tree.root)), tok)
    item = ds[1]
    assert item["id"] == "nlvr2_valid_1" and item["target"] == "true"
    assert item["vis_feats"].shape == (72, 16)
    assert torch.equal(item["vis_feats"][:36], pooled(tree, "valid-0-0-img0"))
    assert torch.equal(item["vis_feats"][36:], pooled(tree, "valid-0-0-img1"))
    assert item["img_order_ids"].tolist() == [0] * 36 + [1] * 36
    assert item["obj_order_ids"].tolist() == list(range(36)) * 2
    assert item["target_ids"].tolist() == tok.encode("true") and ds[0]["target_ids"].tolist() == tok.encode("false")
    assert ds.extra("identifier")["nlvr2_valid_1"] == "valid-0-0-1"
    ds.records[0].text = " ".join(["dog"] * 50)
    assert len(ds[0]["input_ids"]) == len(tok.encode("nlvr: ")) + 50  # statements are not truncated (upstream)


def test_caption_train_items_per_caption_eval_items_per_image(tree: Tree, tok: WordTokenizer) -> None:
    cfg = DataCfg(str(tree.root))
    train = build_task_dataset("caption", "karpathy_train", cfg, tok)
    assert [r.id for r in train.records] == ["COCO_train2014_000000000001#0", "COCO_train2014_000000000001#1",
                                             "COCO_train2014_000000000002#0", "COCO_train2014_000000000002#1"]
    item = train[2]  # 'restval' images train too
    assert item["input_ids"].tolist() == tok.encode("caption: ")
    assert item["target_ids"].tolist() == tok.encode("Two cats on a sofa")
    assert item["target"] == ["Two cats on a sofa", "A cat sleeps on a sofa."]
    test = build_task_dataset("caption", "karpathy_test", cfg, tok)
    assert test.references() == {"COCO_val2014_000000000004": ["Two dogs playing", "two dogs in the park"]}
    assert test[0]["target_ids"] is None
    assert torch.equal(test[0]["vis_feats"], pooled(tree, "COCO_val2014_000000000004"))


def test_prompts_off_pool_off_and_limits(tree: Tree, tok: WordTokenizer) -> None:
    cfg = DataCfg(str(tree.root), task_prompts=False, pool_size=None, train_limit=1)
    ds = build_task_dataset("vqa", "karpathy_train", cfg, tok)
    assert len(ds) == 1 and ds[0]["input_ids"].tolist() == tok.encode("what color is the dog?")
    assert ds[0]["vis_feats"].shape == (49, 16)
    assert len(build_task_dataset("vqa", "karpathy_test", cfg, tok)) == 2  # eval_limit unset
    assert len(build_task_dataset("vqa", "karpathy_test", cfg, tok, limit=1)) == 1
    two = build_task_dataset("nlvr2", "train", cfg, tok, pool_size=2)  # e.g. model.pool_size of a tiny model
    assert two[0]["vis_feats"].shape == (8, 16) and two[0]["obj_order_ids"].tolist() == [0, 1, 2, 3] * 2


def test_length_limits_follow_upstream(tree: Tree, tok: WordTokenizer, tmp_path: Path) -> None:
    ds = build_task_dataset("vqa", "karpathy_train", DataCfg(str(tree.root)), tok)
    long_text = " ".join(["dog"] * 50)
    ds.records[0].text = long_text
    ds.records[0].label = {long_text: 1.0}
    item = ds[0]
    assert len(item["input_ids"]) == 20 and item["input_ids"][-1] == tok.eos_token_id  # question: 20 tokens
    assert len(item["target_ids"]) == 10  # answer: 10 tokens
    cap = build_task_dataset("caption", "karpathy_train", DataCfg(str(tree.root)), tok)
    cap.records[0].answer = long_text
    assert len(cap[0]["target_ids"]) == 40  # caption target: 40 tokens


def test_collate_pads_inputs_and_masks_labels(tree: Tree, tok: WordTokenizer) -> None:
    ds = build_task_dataset("vqa", "karpathy_train", DataCfg(str(tree.root), train_answer="most_common"), tok)
    batch = collate("vqa", [ds[0], ds[1]], tok)
    lengths = [len(ds[i]["input_ids"]) for i in range(2)]
    assert batch["input_ids"].shape == (2, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert batch["input_ids"][batch["attention_mask"] == 0].eq(tok.pad_token_id).all()
    assert batch["labels"][0].tolist() == tok.encode("black")
    assert batch["labels"][1].tolist() == tok.encode("2")
    assert batch["scores"].tolist() == pytest.approx([1.0, 0.9])
    assert batch["task"] == "vqa" and batch["ids"] == ["1001", "1002"]
    assert batch["vis_feats"].dtype == torch.float32 and batch["vis_feats"].shape == (2, 36, 16)
    nlvr = build_task_dataset("nlvr2", "train", DataCfg(str(tree.root)), tok)
    batch = collate("nlvr2", [nlvr[i] for i in range(3)], tok)
    assert batch["img_order_ids"].shape == (3, 72) and "scores" not in batch
    cap = build_task_dataset("caption", "karpathy_test", DataCfg(str(tree.root)), tok)
    assert "labels" not in collate("caption", [cap[0]], tok)  # no training targets in caption evaluation
    longer = build_task_dataset("caption", "karpathy_train", DataCfg(str(tree.root)), tok)
    batch = collate("caption", [longer[0], longer[1]], tok)
    short = len(longer[1]["target_ids"])
    assert batch["labels"][1, short:].eq(-100).all() and batch["labels"][0].ne(-100).all()


def test_hf_release_layout_with_parquet_features(tree: Tree, tok: WordTokenizer, tmp_path: Path) -> None:
    """ylsung/VL-Adapter-datasets: annotations under ``annotations/``, features in ``features/<D>/...`` shards."""
    release = tmp_path / "VL-Adapter-datasets"
    for sub in ("vqa", "COCO"):
        shutil.copytree(tree.root / sub, release / "annotations" / sub, ignore=shutil.ignore_patterns("clip_features"))
    coco = {k: v for k, v in tree.features.items() if k.startswith("COCO_")}
    write_parquet_shard(release / "features" / "COCO" / "data_clip_RN101_att" / "part-00000.parquet", coco,
                        row_group_size=2)
    cfg = DataCfg(str(release), features="parquet")
    vqa = build_task_dataset("vqa", "karpathy_test", cfg, tok)
    assert torch.equal(vqa[0]["vis_feats"], pooled(tree, "COCO_val2014_000000000004"))
    assert vqa.references()["3002"].answers == ("red",) * 10
    cap = build_task_dataset("caption", "karpathy_train", cfg, tok)
    assert torch.equal(cap[3]["vis_feats"], pooled(tree, "COCO_train2014_000000000002"))
