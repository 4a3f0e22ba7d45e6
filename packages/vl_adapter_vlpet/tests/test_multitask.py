"""MultitaskLoader: upstream per-task batch ratios, one task per batch, epoch = sum of task batches, seeded order,
exact mid-epoch resume, DDP sharding; and the evaluation loader."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from data_fixtures import DataCfg, WordTokenizer
from peft_core.runtime.distributed import DistInfo
from torch.utils.data import DistributedSampler
from vl_adapter_vlpet.data import (
    MultitaskLoader,
    VLTaskDataset,
    build_task_dataset,
    epoch_indices,
    eval_loader,
    task_batch_size,
)
from vl_adapter_vlpet.data.synthetic import WORDS, make_synthetic_multitask

SPLITS = {"vqa": "karpathy_train", "gqa": "train", "nlvr2": "train", "caption": "karpathy_train"}


@pytest.fixture(scope="module")
def tok() -> WordTokenizer:
    return WordTokenizer(WORDS)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory, tok: WordTokenizer) -> dict[str, VLTaskDataset]:
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_multitask(root, n_images=20, seed=1, feat_dim=16)
    return {t: build_task_dataset(t, s, DataCfg(str(root)), tok) for t, s in SPLITS.items()}


def epoch_batches(loader: MultitaskLoader) -> list[dict]:
    return list(loader)


def test_upstream_batch_ratios() -> None:
    assert [task_batch_size(t, 500) for t in ("vqa", "gqa", "nlvr2", "caption")] == [500, 833, 166, 416]
    assert [task_batch_size(t, 2) for t in ("vqa", "gqa", "nlvr2", "caption")] == [2, 3, 1, 1]  # 0 -> 1
    assert task_batch_size("nlvr2", 7, multitask=False) == 7
    assert task_batch_size("tvc", 50) == 50
    with pytest.raises(ValueError, match="batch size 0 is not allowed"):
        task_batch_size("vqa", 0)


def test_epoch_is_every_task_loader_once(datasets: dict[str, VLTaskDataset], tok: WordTokenizer) -> None:
    loader = MultitaskLoader(datasets, batch_size=6, tokenizer=tok, seed=0)
    assert loader.batch_sizes == {"vqa": 6, "gqa": 10, "nlvr2": 2, "caption": 5}
    sizes = {t: len(d) for t, d in datasets.items()}
    assert sizes == {"vqa": 42, "gqa": 28, "nlvr2": 14, "caption": 70}
    assert loader.task_batches() == {"vqa": 7, "gqa": 3, "nlvr2": 7, "caption": 14}
    batches = epoch_batches(loader)
    assert len(batches) == len(loader) == loader.steps_per_epoch == 31
    assert Counter(b["task"] for b in batches) == Counter(loader.task_batches())
    for task, dataset in datasets.items():
        ids = [i for b in batches if b["task"] == task for i in b["ids"]]
        assert sorted(ids) == sorted(r.id for r in dataset.records)  # each item exactly once
        assert all(len(b["ids"]) <= loader.batch_sizes[task] for b in batches if b["task"] == task)
    assert [b["task"] for b in batches] == loader.task_order()
    assert len({b["task"] for b in batches[:8]}) > 1  # tasks are interleaved, not one after the other
    assert epoch_batches(loader)[0]["ids"] == batches[0]["ids"]  # a second pass is a full epoch again


def test_seeded_orders(datasets: dict[str, VLTaskDataset], tok: WordTokenizer) -> None:
    assert (MultitaskLoader(datasets, batch_size=6, tokenizer=tok, seed=4).task_order()
            == MultitaskLoader(datasets, batch_size=6, tokenizer=tok, seed=4).task_order())
    assert (MultitaskLoader(datasets, batch_size=6, tokenizer=tok, seed=5).task_order()
            != MultitaskLoader(datasets, batch_size=6, tokenizer=tok, seed=4).task_order())
    two = {"gqa": datasets["gqa"], "nlvr2": datasets["nlvr2"]}
    a = MultitaskLoader(two, batch_size=6, tokenizer=tok, seed=4)
    first = [x["ids"] for x in a]
    assert first == [x["ids"] for x in MultitaskLoader(two, batch_size=6, tokenizer=tok, seed=4)]
    a.set_epoch(1)
    assert [x["ids"] for x in a] != first
    plain = MultitaskLoader(datasets, batch_size=6, tokenizer=tok, shuffle=False)
    order = plain.task_order()
    assert order == sorted(order, key=list(datasets).index)  # unshuffled: task by task
    assert next(iter(plain))["ids"] == [r.id for r in datasets["vqa"].records[:6]]


def test_resume_inside_an_epoch_gives_the_remaining_batches(datasets: dict[str, VLTaskDataset],
                                                            tok: WordTokenizer) -> None:
    loader = MultitaskLoader(datasets, batch_size=6, tokenizer=tok, seed=7)
    loader.set_epoch(2)
    full = epoch_batches(loader)
    resumed = MultitaskLoader(datasets, batch_size=6, tokenizer=tok, seed=7)
    resumed.set_epoch(2, start_step=11)
    rest = epoch_batches(resumed)
    assert len(rest) == len(resumed) == len(full) - 11
    for x, y in zip(full[11:], rest, strict=True):
        assert x["task"] == y["task"] and x["ids"] == y["ids"]
        assert torch.equal(x["vis_feats"], y["vis_feats"])
        assert torch.equal(x["labels"], y["labels"])  # the same drawn answers
    with pytest.raises(ValueError, match=r"start_step=99 is outside \[0, 31\]"):
        resumed.set_epoch(0, start_step=99)


@pytest.mark.parametrize("length,world,shuffle,drop_last", [
    (10, 1, True, False), (11, 3, True, False), (11, 3, False, False), (11, 3, True, True), (2, 4, True, False)])
def test_epoch_indices_are_distributed_sampler_orders(length: int, world: int, shuffle: bool, drop_last: bool) -> None:
    for rank in range(world):
        sampler = DistributedSampler(range(length), num_replicas=world, rank=rank, shuffle=shuffle, seed=9,
                                     drop_last=drop_last)
        sampler.set_epoch(4)
        ours = epoch_indices(length, epoch=4, seed=9, shuffle=shuffle, info=DistInfo(rank, world, rank),
                             drop_last=drop_last)
        assert ours == list(sampler)


def test_ddp_ranks_share_the_task_order_and_split_the_samples(datasets: dict[str, VLTaskDataset],
                                                              tok: WordTokenizer) -> None:
    ranks = [MultitaskLoader(datasets, batch_size=4, tokenizer=tok, seed=3, info=DistInfo(r, 2, r)) for r in (0, 1)]
    for loader in ranks:
        loader.set_epoch(1)
    runs = [epoch_batches(loader) for loader in ranks]
    assert [b["task"] for b in runs[0]] == [b["task"] for b in runs[1]]  # same task at every step
    for task, dataset in datasets.items():
        per_rank = [[i for b in run if b["task"] == task for i in b["ids"]] for run in runs]
        assert len(per_rank[0]) == len(per_rank[1]) == -(-len(dataset) // 2)
        assert set(per_rank[0]) | set(per_rank[1]) == {r.id for r in dataset.records}
        assert len(set(per_rank[0]) & set(per_rank[1])) == len(dataset) % 2  # only the padding repeats


def test_workers_give_the_same_batches(datasets: dict[str, VLTaskDataset], tok: WordTokenizer) -> None:
    subset = {"vqa": datasets["vqa"], "nlvr2": datasets["nlvr2"]}
    plain = epoch_batches(MultitaskLoader(subset, batch_size=12, tokenizer=tok, seed=2))
    workers = epoch_batches(MultitaskLoader(subset, batch_size=12, tokenizer=tok, seed=2, num_workers=2))
    assert [b["ids"] for b in plain] == [b["ids"] for b in workers]
    assert all(torch.equal(a["labels"], b["labels"]) for a, b in zip(plain, workers, strict=True))


def test_single_task_and_explicit_batch_sizes(datasets: dict[str, VLTaskDataset], tok: WordTokenizer) -> None:
    single = MultitaskLoader({"nlvr": datasets["nlvr2"]}, batch_size=4, tokenizer=tok)
    assert single.batch_sizes == {"nlvr2": 4} and len(single) == 4
    explicit = MultitaskLoader(datasets, batch_size={"vqa": 21, "gqa": 28, "nlvr2": 14, "caption": 35},
                               tokenizer=tok)
    assert explicit.task_batches() == {"vqa": 2, "gqa": 1, "nlvr2": 1, "caption": 2}
    with pytest.raises(ValueError, match=r"no entry for task\(s\) \['caption'\]"):
        MultitaskLoader(datasets, batch_size={"vqa": 1, "gqa": 1, "nlvr2": 1}, tokenizer=tok)


def test_eval_loader_shards_without_duplicates(datasets: dict[str, VLTaskDataset], tok: WordTokenizer) -> None:
    dataset = datasets["nlvr2"]
    shards = [[i for b in eval_loader(dataset, 4, tok, info=DistInfo(r, 3, r)) for i in b["ids"]] for r in range(3)]
    assert sorted(i for shard in shards for i in shard) == sorted(r.id for r in dataset.records)
    assert [len(s) for s in shards] == [5, 5, 4]
    batch = next(iter(eval_loader(dataset, 4, tok)))
    assert batch["task"] == "nlvr2" and batch["ids"] == [r.id for r in dataset.records[:4]]
