"""Video tasks (TVQA, How2QA, TVC, YC2C) on VALUE-format fixture files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from data_fixtures import VIDEO_DIM, DataCfg, Tree, WordTokenizer, write_jsonl, write_video_tree
from vl_adapter_vlpet.data import DataFormatError, build_task_dataset, resize_frames


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return write_video_tree(tmp_path / "datasets")


@pytest.fixture(scope="module")
def tok() -> WordTokenizer:
    return WordTokenizer()


def test_tvqa_text_choices_prompt_after_and_frames(tree: Tree, tok: WordTokenizer) -> None:
    ds = build_task_dataset("tvqa", "train", DataCfg(str(tree.root), features="npz"), tok)
    assert ds.train and [r.id for r in ds.records] == ["7", "8"]
    assert ds.records[0].text == ("[Subs] hello where is he? [Q] Where is he? [TS] (0.5-1.8) [Choices] a0: home. "
                                  "a1: park. a2: school. a3: shop. a4: beach.")
    item = ds[0]
    assert item["input_ids"].tolist() == tok.encode(ds.records[0].text + " tvqa: ")
    assert item["target_ids"].tolist() == tok.encode("a0") and ds[1]["target"] == "a1"
    short = torch.from_numpy(tree.features["friends_s01e01_seg01_clip_00"])
    assert item["vis_feats"].shape == (64, VIDEO_DIM)
    assert torch.equal(item["vis_feats"][:3], short) and not item["vis_feats"][3:].any()  # zero-padded to 64
    long = torch.from_numpy(tree.features["friends_s01e01_seg01_clip_01"])
    assert torch.equal(ds[1]["vis_feats"], resize_frames(long, 64))  # 80 frames max-pooled to 64
    assert not item["vis_pos"].any() and "img_order_ids" not in item


def test_how2qa_has_four_choices(tree: Tree, tok: WordTokenizer) -> None:
    ds = build_task_dataset("how2qa", "val_release", DataCfg(str(tree.root)), tok)
    assert ds.records[0].text.endswith("[Choices] a0: eggs. a1: salt. a2: dog. a3: cat.")
    assert not ds.train and ds.references() == {"h1": "a0"}


def test_tvc_and_yc2c_items_per_description(tree: Tree, tok: WordTokenizer) -> None:
    tvc = build_task_dataset("tvc", "val_release", DataCfg(str(tree.root)), tok)
    assert tvc.references() == {"111": ["he is home."], "112": ["a man is home"]}
    assert tvc.records[0].text == "[Subs] hello where is he? [TS] ([0.1, 1.9])"
    assert tvc[1]["target_ids"].tolist() == tok.encode("a man is home")
    yc2c = build_task_dataset("yc2c", "train_release", DataCfg(str(tree.root)), tok)
    assert yc2c.records[0].text == "[Subs] adds salt"  # no [TS] for YouCook2
    assert yc2c[0]["input_ids"].tolist() == tok.encode("[Subs] adds salt yc2c: ")
    test = build_task_dataset("tvc", "test_release", DataCfg(str(tree.root)), tok)
    assert test.references() == {"11": None} and test[0]["target_ids"] is None


def test_video_frames_option_and_prompt_off(tree: Tree, tok: WordTokenizer) -> None:
    ds = build_task_dataset("yc2c", "val_release", DataCfg(str(tree.root), video_frames=4, task_prompts=False), tok)
    assert ds[0]["vis_feats"].shape == (4, VIDEO_DIM)
    assert ds[0]["input_ids"].tolist() == tok.encode("[Subs] adds salt ")
    assert build_task_dataset("yc2c", "val_release", DataCfg(str(tree.root)), tok, video_frames=2)[0]["vis_feats"] \
        .shape == (2, VIDEO_DIM)


def test_video_errors(tree: Tree, tok: WordTokenizer) -> None:
    ann = tree.root / "video" / "ann"
    write_jsonl(ann / "tvqa" / "tvqa_val.jsonl", [{"qid": 1, "vid_name": "unknown_clip", "q": "q", "ts": "0-1",
                                                  **{f"a{i}": "x" for i in range(5)}}])
    with pytest.raises(DataFormatError, match=r"tvqa_val.jsonl, row 1: video 'unknown_clip' has no subtitles in "
                                              r".*tv_subtitles.jsonl"):
        build_task_dataset("tvqa", "val", DataCfg(str(tree.root)), tok)
    rows = [{**json.loads(line), "answer_idx": 7} for line in (ann / "how2qa" / "how2qa_val_release.jsonl")
            .read_text().splitlines()]
    write_jsonl(ann / "how2qa" / "how2qa_val_release.jsonl", rows)
    with pytest.raises(DataFormatError, match=r"how2qa_val_release.jsonl, row 1: answer_idx 7 is not in 0..3"):
        build_task_dataset("how2qa", "val_release", DataCfg(str(tree.root)), tok)
    write_jsonl(ann / "yc2c" / "yc2c_val_release.jsonl", [{"vid_name": "yc2_v1", "descs": [{"desc": "x"}]}])
    with pytest.raises(DataFormatError, match=r"yc2c_val_release.jsonl, row 1, desc 0: missing key\(s\) "
                                              r"\['desc_id'\]"):
        build_task_dataset("yc2c", "val_release", DataCfg(str(tree.root)), tok)
    (ann / "tvc" / "tvc_val_release.jsonl").write_text('{"vid_name": "a"\n')
    with pytest.raises(DataFormatError, match=r"tvc_val_release.jsonl, line 1: not valid JSON"):
        build_task_dataset("tvc", "val_release", DataCfg(str(tree.root)), tok)
    (tree.root / "video" / "vis_features" / "tv" / "clip-vit" / "friends_s01e01_seg01_clip_00.npz").unlink()
    ds = build_task_dataset("tvqa", "train", DataCfg(str(tree.root)), tok)
    with pytest.raises(DataFormatError, match=r"video 'friends_s01e01_seg01_clip_00': no "
                                              r"friends_s01e01_seg01_clip_00.npz"):
        ds[0]


def test_video_feature_path_override(tree: Tree, tok: WordTokenizer) -> None:
    flat = tree.root / "video" / "vis_features" / "yc2" / "clip-vit"
    ds = build_task_dataset("yc2c", "val_release", DataCfg(str(tree.root), feature_paths={"video": str(flat)}), tok)
    assert torch.equal(ds[0]["vis_feats"][:5], torch.from_numpy(tree.features["yc2_v1"]))
    nested = build_task_dataset("yc2c", "val_release", DataCfg(
        str(tree.root), feature_paths={"video": str(tree.root / "video" / "vis_features")}), tok)
    assert torch.equal(nested[0]["vis_feats"], ds[0]["vis_feats"])
