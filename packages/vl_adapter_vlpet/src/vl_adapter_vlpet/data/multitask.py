"""Multitask training loader (round-robin over task loaders) and the evaluation loader.

Upstream (HenryHZY/VL-PET@7430cad ``src/multitask_data.py:MultitaskLoader``, ``sampling="roundrobin"``, the default
of every script): each epoch lists every task ``len(task loader)`` times, shuffles that list with
``random.Random(epoch)``, and for each entry yields the next batch of that task's loader. So an epoch is the **sum**
of the tasks' batch counts, every task loader is exhausted exactly once, and each batch holds one task. Task batches
are ``B``, ``floor(B*100/60)``, ``floor(B*20/60)``, ``floor(B*50/60)`` for VQA, GQA, NLVR2, COCO
(:func:`~vl_adapter_vlpet.data.tasks.task_batch_size`).

Here the same, plus:

* seeding: the task order uses ``random.Random(seed * 1000003 + epoch)`` and each task's sample order a
  ``torch.Generator`` seeded ``seed + epoch`` (what ``DistributedSampler`` does), so a run is reproducible and
  :meth:`MultitaskLoader.set_epoch` ``(epoch, start_step=k)`` resumes exactly after ``k`` batches of an epoch (the
  skipped batches are never loaded). Upstream only re-drew the task order when ``set_epoch`` was called, which its
  trainer did only under ``--distributed``: without it, epochs after the first were empty; here :meth:`__iter__`
  always rebuilds the order of the current epoch.
* DDP: every task's indices are padded to a multiple of the world size and split ``rank::world_size`` (as
  ``DistributedSampler``), so all processes see the same number of batches per task, and since the task order
  depends only on ``seed`` and ``epoch``, every process trains the same task at the same step.
* A single task is the same loader with one task (batch ``B``, no ratio).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from peft_core.runtime.distributed import DistInfo, ShardSampler
from torch.utils.data import DataLoader, Dataset

from vl_adapter_vlpet.data.collate import collate
from vl_adapter_vlpet.data.tasks import task_batch_size, task_spec


class TaskCollate:
    """Picklable ``collate_fn`` of one task (DataLoader workers)."""

    def __init__(self, task: str, tokenizer: Any) -> None:
        self.task, self.tokenizer = task, tokenizer

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return collate(self.task, items, self.tokenizer)


def epoch_indices(length: int, *, epoch: int, seed: int, shuffle: bool, info: DistInfo,
                  drop_last: bool = False) -> list[int]:
    """This process's sample order of one epoch (``DistributedSampler`` semantics: permutation of ``seed + epoch``,
    padded by repetition (or truncated when ``drop_last``) to a multiple of the world size, then ``rank::world``)."""
    if shuffle:
        generator = torch.Generator().manual_seed(seed + epoch)
        order = torch.randperm(length, generator=generator).tolist()
    else:
        order = list(range(length))
    world = info.world_size
    if drop_last:
        order = order[: length - length % world]
    elif length % world:
        extra = world - length % world
        order += (order * math.ceil(extra / max(length, 1)))[:extra]
    return order[info.rank :: world]


class MultitaskLoader:
    """Round-robin multitask loader (module docstring).

    Args:
        datasets: ``{task: dataset}`` (insertion order is the task order before shuffling).
        batch_size: the base batch ``B`` (per-task batches derived as upstream) or ``{task: batch}``.
        tokenizer: for padding. shuffle: shuffle samples and the task order. seed: see the module docstring.
        num_workers / pin_memory: of each task's DataLoader. info: the DDP process (``None``: one process).
        drop_last: drop each task's last incomplete batch.
    """

    def __init__(self, datasets: Mapping[str, Dataset], batch_size: int | Mapping[str, int], tokenizer: Any, *,
                 shuffle: bool = True, seed: int = 0, num_workers: int = 0, pin_memory: bool = False,
                 info: DistInfo | None = None, drop_last: bool = False) -> None:
        if not datasets:
            raise ValueError("MultitaskLoader needs at least one task dataset")
        self.datasets = {task_spec(t).name: d for t, d in datasets.items()}
        multitask = len(self.datasets) > 1
        if isinstance(batch_size, Mapping):
            sizes = {task_spec(t).name: int(b) for t, b in batch_size.items()}
            missing = sorted(set(self.datasets) - set(sizes))
            if missing:
                raise ValueError(f"batch_size has no entry for task(s) {missing}; expected one per task")
            self.batch_sizes = {t: sizes[t] for t in self.datasets}
        else:
            self.batch_sizes = {t: task_batch_size(t, int(batch_size), multitask) for t in self.datasets}
        if any(b < 1 for b in self.batch_sizes.values()):
            raise ValueError(f"batch sizes {self.batch_sizes} must all be >= 1")
        self.tokenizer, self.shuffle, self.seed = tokenizer, shuffle, seed
        self.num_workers, self.pin_memory, self.drop_last = num_workers, pin_memory, drop_last
        self.info = info or DistInfo()
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Select the epoch (sample and task order, answer draws) and skip its first ``start_step`` batches."""
        if start_step < 0 or start_step > self.steps_per_epoch:
            raise ValueError(f"start_step={start_step} is outside [0, {self.steps_per_epoch}]")
        self.epoch, self.start_step = epoch, start_step

    def _indices(self, task: str) -> list[int]:
        return epoch_indices(len(self.datasets[task]), epoch=self.epoch, seed=self.seed, shuffle=self.shuffle,
                             info=self.info, drop_last=self.drop_last)

    def task_batches(self) -> dict[str, int]:
        """Batches per task in one epoch (this process)."""
        out = {}
        world = self.info.world_size
        for task, size in self.batch_sizes.items():
            length = len(self.datasets[task])
            n = length // world if self.drop_last else math.ceil(length / world)  # = len(self._indices(task))
            out[task] = n // size if self.drop_last else math.ceil(n / size)
        return out

    @property
    def steps_per_epoch(self) -> int:
        return sum(self.task_batches().values())

    def task_order(self) -> list[str]:
        """The tasks of this epoch's batches, in order (the same on every process)."""
        order = [task for task, n in self.task_batches().items() for _ in range(n)]
        if self.shuffle:
            random.Random(self.seed * 1000003 + self.epoch).shuffle(order)
        return order

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start_step

    def __iter__(self) -> Iterator[dict[str, Any]]:
        order = self.task_order()
        skipped = {task: order[: self.start_step].count(task) for task in self.datasets}
        iterators = {}
        for task, dataset in self.datasets.items():
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(self.epoch)
            size = self.batch_sizes[task]
            indices = self._indices(task)[skipped[task] * size:]
            loader = DataLoader(dataset, batch_size=size, sampler=indices, num_workers=self.num_workers,
                                pin_memory=self.pin_memory, drop_last=self.drop_last,
                                collate_fn=TaskCollate(task, self.tokenizer))
            iterators[task] = iter(loader)
        for task in order[self.start_step:]:
            yield next(iterators[task])


def eval_loader(dataset: Dataset, batch_size: int, tokenizer: Any, *, info: DistInfo | None = None,
                num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """Sequential loader of an evaluation split, sharded over processes without padding (each item scored once)."""
    task = getattr(dataset, "task", None)
    if task is None:
        raise ValueError(f"{type(dataset).__name__} has no 'task' attribute; expected a VLTaskDataset")
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), info or DistInfo()),
                      num_workers=num_workers, pin_memory=pin_memory, collate_fn=TaskCollate(task, tokenizer))
