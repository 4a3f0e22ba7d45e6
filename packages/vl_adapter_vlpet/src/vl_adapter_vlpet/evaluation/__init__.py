"""Task metrics (percent / x100, the keys of shared/baselines/vl_pet.toml) and ``evaluate_task``.

    evaluate_task("vqa", {"1": "2"}, {"1": VQATarget({"2": 1.0}, ["2"] * 10)})    -> {"vqa_score": 100.0}
    evaluate_task("caption", {"img": "a dog"}, {"img": ["a dog runs", ...]})      -> {"cider": ..., "bleu4": ...}

Keys: vqa ``vqa_score``; gqa ``gqa_acc``; nlvr2 ``nlvr2_acc`` (+ ``nlvr2_consistency`` with identifiers); caption,
tvc, yc2c ``cider``, ``bleu4``; tvqa ``tvqa_acc``; how2qa ``how2qa_acc``. Predictions and references are
``{id: ...}`` with the same ids (compared as strings).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vl_adapter_vlpet.data.tasks import task_spec
from vl_adapter_vlpet.evaluation.accuracy import GQAEvaluator, MultipleChoiceEvaluator, NLVR2Evaluator
from vl_adapter_vlpet.evaluation.caption import CaptionEvaluator, ptb_tokenize
from vl_adapter_vlpet.evaluation.vqa import VQAEvaluator, normalize_answer, official_score

__all__ = ["CaptionEvaluator", "GQAEvaluator", "MultipleChoiceEvaluator", "NLVR2Evaluator", "VQAEvaluator",
           "evaluate_task", "normalize_answer", "official_score", "ptb_tokenize"]


def evaluate_task(task: str, predictions: Mapping[Any, Any], references: Mapping[Any, Any], *,
                  vqa_mode: str = "auto", nlvr2_identifiers: Mapping[str, str] | None = None) -> dict[str, float]:
    """Score ``predictions`` of ``task`` against ``references`` (module docstring); ``vqa_mode`` see
    :class:`VQAEvaluator`, ``nlvr2_identifiers`` ``{uid: identifier}`` adds the NLVR2 consistency."""
    name = task_spec(task).name
    if name == "vqa":
        return VQAEvaluator(vqa_mode).evaluate(predictions, references)
    if name == "gqa":
        return GQAEvaluator().evaluate(predictions, references)
    if name == "nlvr2":
        return NLVR2Evaluator(nlvr2_identifiers).evaluate(predictions, references)
    if name in ("tvqa", "how2qa"):
        return MultipleChoiceEvaluator(name).evaluate(predictions, references)
    return CaptionEvaluator(name).evaluate(predictions, references)
