"""The dataset shared by every task: parsed records -> tokenized text + pooled features, one item at a time.

An item (what :func:`vl_adapter_vlpet.data.collate.collate` batches)::

    id            str              question / image / clip id (unique within a split)
    input_ids     Long[L]          prompt + text, tokenized (BOS/EOS as the tokenizer adds them), truncated
    target_ids    Long[T] | None   the training target (None when the item has none, e.g. caption evaluation)
    score         float | None     VQA: soft score of the sampled answer (upstream weights the loss by it)
    vis_feats     Float[V, F]      pooled grid features (36 for one image, 72 for NLVR2), or 64 video frames
    vis_pos       Float[V, 4]      zeros (upstream: grid / frame features have no boxes)
    img_order_ids Long[V] | None   NLVR2: 0 for the first image's tokens, 1 for the second
    obj_order_ids Long[V] | None   NLVR2: 0..35 for each image (upstream ``Downsample`` keeps the first 36 of 0..48)
    target        reference used by the evaluator (VQA :class:`VQATarget`, GQA answer, NLVR2 "true"/"false",
                  captions list[str], video QA "a<k>")

Training answers (upstream ``src/vqa_clip_data.py`` / ``gqa_clip_data.py`` ``__getitem__``, after LXMERT): from the
label ``{answer: score}`` one answer is drawn with probability ``score / sum(scores)`` ("sample", the default) or the
highest-scored one is taken ("most_common"); an all-zero label gives the empty answer. Evaluation items always take
the highest-scored answer. Draws use ``numpy.random.default_rng([seed, epoch, index])``, so an item is the same in
every DataLoader worker and after a resume (upstream drew from the global numpy state).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vl_adapter_vlpet.data.errors import DataFormatError
from vl_adapter_vlpet.data.features import FeatureStore, pool_grid, resize_frames

ANSWER_MODES = ("sample", "most_common")


class VQATarget(dict):
    """A VQA reference: the label ``{answer: score}`` (a dict, as in the upstream Karpathy JSON files), plus
    ``answers``, the 10 raw human answers when known (they select the official VQA metric in
    :class:`vl_adapter_vlpet.evaluation.VQAEvaluator`)."""

    def __init__(self, label: dict[str, float], answers: Sequence[str] | None = None) -> None:
        super().__init__(label)
        self.answers: tuple[str, ...] | None = tuple(answers) if answers is not None else None

    def __reduce__(self) -> tuple:  # keep ``answers`` through pickling (DataLoader workers, DDP gathers)
        return (VQATarget, (dict(self), self.answers))


@dataclass
class Record:
    """One parsed annotation: ``keys`` are feature ids (1 image, 2 for NLVR2, or a video); ``answer`` a fixed
    training target; ``label`` a ``{answer: score}`` to draw the training target from; ``target`` the reference."""

    id: str
    text: str
    keys: tuple[str, ...]
    target: Any = None
    answer: str | None = None
    label: dict[str, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ItemSpec:
    """How records become items: prompt placement, length limits, visual processing."""

    prompt: str = ""
    prompt_after: bool = False
    max_input_length: int | None = 20
    max_target_length: int | None = None
    pool_size: int | None = 6
    video_frames: int | None = None
    answer_mode: str = "sample"


def encode(tokenizer: Any, text: str, max_length: int | None) -> list[int]:
    """Token ids with the tokenizer's special tokens, truncated to ``max_length`` (``None``: not truncated)."""
    if max_length is None:
        return list(tokenizer.encode(text))
    return list(tokenizer.encode(text, max_length=max_length, truncation=True))


class VLTaskDataset(Dataset):
    """Items of one task and split (see the module docstring). ``train`` selects the training behaviour (answer
    draws); ``seed`` and :meth:`set_epoch` make the draws reproducible."""

    def __init__(self, task: str, split: str, records: list[Record], tokenizer: Any, store: FeatureStore,
                 spec: ItemSpec, *, train: bool, seed: int = 0) -> None:
        if spec.answer_mode not in ANSWER_MODES:
            raise ValueError(f"answer_mode={spec.answer_mode!r} is not allowed; expected one of {list(ANSWER_MODES)}")
        self.task, self.split, self.records = task, split, records
        self.tokenizer, self.store, self.spec = tokenizer, store, spec
        self.train, self.seed, self.epoch = train, seed, 0
        ids = [r.id for r in records]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise DataFormatError(f"{task}/{split}: id {dup!r} occurs more than once; expected unique ids")

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"VLTaskDataset({self.task}/{self.split}, {len(self)} items, train={self.train}, store={self.store!r})"

    def check_features(self) -> None:
        """Raise :class:`DataFormatError` naming the first ids whose features the store lacks (reads no feature)."""
        missing = sorted({k for r in self.records for k in r.keys if k not in self.store})
        if missing:
            raise DataFormatError(f"{self.task}/{self.split}: {len(missing)} feature id(s) missing from "
                                  f"{self.store!r}, e.g. {missing[:5]}")

    def set_epoch(self, epoch: int) -> None:
        """Select the answer draws of ``epoch`` (training)."""
        self.epoch = epoch

    def references(self) -> dict[str, Any]:
        """``{id: reference}`` for :func:`vl_adapter_vlpet.evaluation.evaluate_task`."""
        return {r.id: r.target for r in self.records}

    def extra(self, key: str) -> dict[str, Any]:
        """``{id: record.extra[key]}`` for the records that have it (NLVR2 ``identifier``, video ``clip_id`` /
        ``type``)."""
        return {r.id: r.extra[key] for r in self.records if key in r.extra}

    def choose_answer(self, record: Record, index: int) -> tuple[str | None, float | None]:
        """The training target text and its score (see the module docstring)."""
        if record.label is None:
            return record.answer, None
        answers, scores = list(record.label), np.asarray(list(record.label.values()), dtype=np.float64)
        total = float(scores.sum()) if scores.size else 0.0
        if total <= 0:
            return "", 0.0
        if self.train and self.spec.answer_mode == "sample":
            rng = np.random.default_rng([self.seed, self.epoch, index])
            choice = int(rng.choice(len(answers), p=scores / total))
        else:
            choice = int(np.argmax(scores))
        return answers[choice], float(scores[choice])

    def visual(self, record: Record) -> dict[str, torch.Tensor]:
        """Features (pooled / resized), zero boxes, and NLVR2's order ids."""
        parts = []
        for key in record.keys:
            feats = torch.from_numpy(self.store.get(key))
            if self.spec.video_frames is not None:
                feats = resize_frames(feats, self.spec.video_frames)
            else:
                feats = pool_grid(feats, self.spec.pool_size, where=f"{self.task}/{self.split} image {key!r}")
            parts.append(feats)
        if len({p.shape for p in parts}) > 1:
            raise DataFormatError(f"{self.task}/{self.split} {record.id!r}: the images {list(record.keys)} have "
                                  f"feature shapes {[tuple(p.shape) for p in parts]}; expected equal shapes")
        vis = torch.cat(parts, dim=0)
        out = {"vis_feats": vis, "vis_pos": torch.zeros(vis.shape[0], 4)}
        if len(parts) > 1:
            n = parts[0].shape[0]
            out["img_order_ids"] = torch.arange(len(parts)).repeat_interleave(n)
            out["obj_order_ids"] = torch.arange(n).repeat(len(parts))
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        spec = self.spec
        text = f"{record.text} {spec.prompt}" if spec.prompt_after else f"{spec.prompt}{record.text}"
        answer, score = self.choose_answer(record, index)
        item: dict[str, Any] = {
            "id": record.id,
            "input_ids": torch.tensor(encode(self.tokenizer, text, spec.max_input_length), dtype=torch.long),
            "target_ids": None,
            "score": score,
            "target": record.target,
        }
        if answer is not None:
            item["target_ids"] = torch.tensor(encode(self.tokenizer, answer, spec.max_target_length),
                                              dtype=torch.long)
        item.update(self.visual(record))
        return item
