"""Accuracy metrics: GQA exact match, NLVR2 true/false, TVQA / How2QA multiple choice.

* GQA (upstream HenryHZY/VL-PET@7430cad ``src/gqa_clip_data.py:GQAEvaluator.evaluate``): ``label.get(p, 0)``
  averaged; GQA labels hold one answer with score 1, so this is the exact match of the prediction and the answer.
  No answer normalisation (as upstream); only surrounding whitespace is ignored. A reference is the answer string
  or the ``{answer: score}`` label.
* NLVR2 (``src/nlvr_clip_data.py:NLVR2Evaluator.evaluate``, lil-lab/nlvr ``nlvr2/eval/metrics.py``): accuracy of the
  prediction against ``"true"`` / ``"false"``; a generated text counts as its lower-cased, stripped string (anything
  but ``true`` / ``false`` is wrong), ``1`` / ``0`` / ``True`` / ``False`` are accepted as well. With
  ``identifiers`` (``{uid: identifier}``), also the consistency: the share of sentences (identifier without its
  third ``-`` field) whose every image pair is right.
* TVQA / How2QA (``src/video/tvqa_data.py:TVQAEvaluator``): the prediction equals the answer ``"a<k>"``.

All are reported in percent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vl_adapter_vlpet.evaluation.common import aligned


class GQAEvaluator:
    """``evaluate(predictions, references) -> {"gqa_acc": %}``."""

    @staticmethod
    def score(prediction: str, reference: Any) -> float:
        pred = str(prediction).strip()
        if isinstance(reference, Mapping):
            return float(reference.get(pred, 0.0))
        return float(pred == str(reference).strip())

    def evaluate(self, predictions: Mapping[Any, str], references: Mapping[Any, Any]) -> dict[str, float]:
        rows = aligned("gqa", predictions, references)
        return {"gqa_acc": 100.0 * sum(self.score(p, r) for _, p, r in rows) / len(rows)}


def nlvr2_label(value: Any) -> str | None:
    """``"true"`` / ``"false"`` for a prediction or reference (text, bool or 0/1), ``None`` for anything else."""
    if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
        return "true" if value else "false"
    text = str(value).strip().lower()
    return text if text in ("true", "false") else None


class NLVR2Evaluator:
    """``evaluate(predictions, references) -> {"nlvr2_acc": %[, "nlvr2_consistency": %]}``."""

    def __init__(self, identifiers: Mapping[str, str] | None = None) -> None:
        self.identifiers = {str(k): str(v) for k, v in (identifiers or {}).items()}

    def evaluate(self, predictions: Mapping[Any, Any], references: Mapping[Any, Any]) -> dict[str, float]:
        rows = aligned("nlvr2", predictions, references)
        correct = {}
        for key, pred, ref in rows:
            truth = nlvr2_label(ref)
            if truth is None:
                raise ValueError(f"nlvr2: reference {ref!r} of {key!r} is not true/false")
            correct[key] = nlvr2_label(pred) == truth
        out = {"nlvr2_acc": 100.0 * sum(correct.values()) / len(correct)}
        if self.identifiers:
            groups: dict[str, bool] = {}
            for key, ok in correct.items():
                parts = self.identifiers.get(key, key).split("-")
                if len(parts) > 2:
                    parts[2] = ""
                group = "-".join(parts)
                groups[group] = groups.get(group, True) and ok
            out["nlvr2_consistency"] = 100.0 * sum(groups.values()) / len(groups)
        return out


class MultipleChoiceEvaluator:
    """``evaluate(predictions, references) -> {"<task>_acc": %}`` for TVQA / How2QA (answers ``a0``..``a4``)."""

    def __init__(self, task: str) -> None:
        self.task = task

    def evaluate(self, predictions: Mapping[Any, str], references: Mapping[Any, Any]) -> dict[str, float]:
        rows = aligned(self.task, predictions, references)
        hits = sum(str(p).strip() == str(r).strip() for _, p, r in rows)
        return {f"{self.task}_acc": 100.0 * hits / len(rows)}
