"""encode_split (index order, DDP shards, eval mode) and evaluate_split (F30K 1K, COCO 5-fold 1K + 5K)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import word_tokenizer, write_coco, write_f30k
from peft_core.runtime.distributed import DistInfo
from torch import nn
from vse_infty.data import build_transform, make_eval_loaders, read_split
from vse_infty.evaluation import encode as encode_module
from vse_infty.evaluation import encode_split, evaluate_split, retrieval_metrics
from vse_infty.evaluation.encode import assemble

WIDTH = 16


class EchoModel(nn.Module):
    """Image embedding = first region (or the mean pixel per channel), caption embedding = token ids, zero-padded
    to WIDTH."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(1)
        self.modes: list[bool] = []

    def encode_images(self, batch: dict) -> torch.Tensor:
        self.modes.append(self.training)
        emb = batch["features"][:, 0, :] if "features" in batch else batch["images"].mean(dim=(2, 3))
        return nn.functional.pad(emb, (0, WIDTH - emb.shape[1]))

    def encode_texts(self, batch: dict) -> torch.Tensor:
        ids = batch["input_ids"] * batch["attention_mask"]
        return nn.functional.pad(ids, (0, WIDTH - ids.shape[1])).float()


class OracleModel(nn.Module):
    """A perfect retrieval model: one-hot of the image index for an image and for each of its captions."""

    def __init__(self, n_images: int) -> None:
        super().__init__()
        self.n = n_images

    def encode_images(self, batch: dict) -> torch.Tensor:
        return nn.functional.one_hot(batch["image_index"], self.n).float()

    def encode_texts(self, batch: dict) -> torch.Tensor:
        return nn.functional.one_hot(batch["image_index"], self.n).float() * 0.9


@pytest.fixture(scope="module")
def f30k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_f30k(tmp_path_factory.mktemp("data") / "f30k", {"test": 5})


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer()


def first_regions(data) -> np.ndarray:
    return np.pad(np.asarray(data.features)[:, 0, :], ((0, 0), (0, WIDTH - data.features.shape[2])))


def expected_caption_rows(data, tok) -> np.ndarray:
    rows = np.zeros((data.n_captions, WIDTH), dtype=np.float32)
    for c, caption in enumerate(data.captions):
        ids = tok(caption)["input_ids"]
        rows[c, :len(ids)] = ids
    return rows


def test_encode_split_returns_rows_in_index_order(f30k: Path, tok) -> None:
    data = read_split(f30k, "f30k", "test", "precomp")
    model = EchoModel().train()
    images, captions = make_eval_loaders(data, tok, None, batch_size=2)
    img_embs, cap_embs = encode_split(model, images, captions, "cpu")
    np.testing.assert_array_equal(img_embs, first_regions(data))
    np.testing.assert_array_equal(cap_embs, expected_caption_rows(data, tok))
    assert model.modes == [False] * 3 and model.training  # encoded in eval mode, training mode restored


def test_encode_split_reassembles_ddp_shards(f30k: Path, tok, monkeypatch: pytest.MonkeyPatch) -> None:
    data = read_split(f30k, "f30k", "test", "precomp")
    model = EchoModel()
    images_1, captions_1 = make_eval_loaders(data, tok, None, batch_size=2, dist_info=DistInfo(1, 2, 1))
    rank_1 = [encode_module._encode(model.encode_images, images_1, "image_index", torch.device("cpu"), False),
              encode_module._encode(model.encode_texts, captions_1, "caption_index", torch.device("cpu"), False)]
    gathered: list[list] = []

    def fake_gather(items: list, info: DistInfo) -> list:  # all_gather_object order: rank 0's items, rank 1's
        gathered.append([*items, *rank_1[len(gathered)]])
        return gathered[-1]

    monkeypatch.setattr(encode_module, "gather_lists", fake_gather)
    info = DistInfo(0, 2, 0)
    img_embs, cap_embs = encode_split(model, *make_eval_loaders(data, tok, None, 2, dist_info=info), "cpu",
                                      dist_info=info)
    assert [i for idx, _ in gathered[0] for i in idx.tolist()] == [0, 2, 4, 1, 3]  # gathered out of order ...
    np.testing.assert_array_equal(img_embs, first_regions(data))  # ... put back in order
    np.testing.assert_array_equal(cap_embs, expected_caption_rows(data, tok))
    with pytest.raises(ValueError, match=r"index\(es\) missing"):  # one rank's shard alone is incomplete
        monkeypatch.setattr(encode_module, "gather_lists", lambda items, info: items)
        encode_split(model, *make_eval_loaders(data, tok, None, 2, dist_info=info), "cpu", dist_info=info)


def _ddp_worker(rank: int, init_file: str, root: str, out_dir: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        info = DistInfo(rank, 2, rank)
        data = read_split(root, "f30k", "test", "precomp")
        loaders = make_eval_loaders(data, word_tokenizer(), None, batch_size=2, dist_info=info)
        img_embs, cap_embs = encode_split(EchoModel(), *loaders, "cpu", dist_info=info)
        np.savez(os.path.join(out_dir, f"rank{rank}.npz"), img=img_embs, cap=cap_embs)
    finally:
        torch.distributed.destroy_process_group()


def test_encode_split_under_two_gloo_processes(f30k: Path, tok, tmp_path: Path) -> None:
    torch.multiprocessing.start_processes(_ddp_worker, args=(str(tmp_path / "init"), str(f30k), str(tmp_path)),
                                          nprocs=2, start_method="fork")
    data = read_split(f30k, "f30k", "test", "precomp")
    for rank in range(2):
        result = np.load(tmp_path / f"rank{rank}.npz")
        np.testing.assert_array_equal(result["img"], first_regions(data))
        np.testing.assert_array_equal(result["cap"], expected_caption_rows(data, tok))


def test_assemble_rejects_missing_and_repeated_rows() -> None:
    rows = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match=r"1 index\(es\) missing \(e.g. \[2\]\) and 1 repeated \(e.g. \[0\]\)"):
        assemble([(np.array([0, 1]), rows[:2]), (np.array([0]), rows[:1])], 3, "image")
    with pytest.raises(ValueError, match="out of range"):
        assemble([(np.array([3]), rows[:1])], 3, "image")
    np.testing.assert_array_equal(assemble([(np.array([2, 0]), rows[:2]), (np.array([1]), rows[2:])], 3, "x"),
                                  rows[[1, 2, 0]])


def test_evaluate_f30k_raw_1k_metrics(f30k: Path, tok) -> None:
    data = read_split(f30k, "f30k", "test", "backbone")
    metrics = evaluate_split(OracleModel(5), data, tok, build_transform(16), 3, "cpu")
    assert metrics == pytest.approx({**{f"{d}_r{k}": 100.0 for d in ("i2t", "t2i") for k in (1, 5, 10)},
                                     "i2t_medr": 1.0, "i2t_meanr": 1.0, "t2i_medr": 1.0, "t2i_meanr": 1.0,
                                     "rsum": 600.0})


def test_evaluate_coco_testall_gives_5_fold_and_5k(tmp_path: Path, tok) -> None:
    root = write_coco(tmp_path / "coco", {"testall": 10, "test": 5})
    data = read_split(root, "coco", "testall", "precomp")
    metrics = evaluate_split(EchoModel(), data, tok, None, 4, "cpu")
    loaders = make_eval_loaders(data, tok, None, 4)
    img_embs, cap_embs = encode_split(EchoModel(), *loaders, "cpu")
    sims = img_embs @ cap_embs.T
    folds = [retrieval_metrics(sims[2 * f:2 * f + 2, 10 * f:10 * f + 10]) for f in range(5)]
    full = retrieval_metrics(sims)
    for key in full:
        assert metrics[key] == pytest.approx(np.mean([m[key] for m in folds]))
        assert metrics[f"coco5k_{key}"] == pytest.approx(full[key])
    single = evaluate_split(EchoModel(), data, tok, None, 4, "cpu", fold5=False)
    assert single == pytest.approx(full)
    test_1k = evaluate_split(EchoModel(), read_split(root, "coco", "test", "precomp"), tok, None, 4, "cpu")
    assert not any(k.startswith("coco5k_") for k in test_1k) and "rsum" in test_1k
