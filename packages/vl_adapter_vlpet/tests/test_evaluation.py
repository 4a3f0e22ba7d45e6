"""Accuracy metrics against hand-computed cases: VQA soft score (official and label), GQA, NLVR2, TVQA / How2QA."""

from __future__ import annotations

import pytest
from vl_adapter_vlpet.data import VQATarget
from vl_adapter_vlpet.evaluation import VQAEvaluator, evaluate_task, normalize_answer, official_score


def test_vqa_official_score_is_the_leave_one_out_average() -> None:
    answers = ["yes"] * 2 + ["no"] * 8
    # "yes": dropping a "yes" leaves 1 match (1/3), dropping a "no" leaves 2 (2/3): (2 * 1/3 + 8 * 2/3) / 10 = 0.6
    assert official_score("yes", answers) == pytest.approx(0.6)  # the plain min(1, 2 / 3) would give 0.667
    assert official_score("no", answers) == 1.0
    assert official_score("maybe", answers) == 0.0
    # 3 x "2", 2 x "3", 5 x "two": "two" is normalised to "2" but human answers only lose punctuation, so it matches
    # the three "2": dropping a "2" -> 2/3 (3 times), otherwise 1 (7 times) -> 0.9
    assert official_score("two", ["2"] * 3 + ["3"] * 2 + ["two"] * 5) == pytest.approx(0.9)


@pytest.mark.parametrize("prediction,normalised", [
    ("Two.", "2"), ("a dog", "dog"), ("The Red Ball", "red ball"), ("dont", "don't"), ("1,000", "1000"),
    ("t-shirt", "t shirt"), ("yes!", "yes"), ("3.5", "3.5"), ("  none\n", "0"), ("ten, eleven", "10 eleven"),
])
def test_vqa_answer_normalisation(prediction: str, normalised: str) -> None:
    assert normalize_answer(prediction) == normalised


def test_vqa_human_answers_are_normalised_only_when_they_disagree() -> None:
    assert official_score("t-shirt", ["t-shirt"] * 4 + ["shirt"] * 6) == 1.0  # "t shirt" on both sides
    assert official_score("t-shirt", ["t-shirt"] * 10) == 0.0  # unanimous answers stay "t-shirt" (official quirk)


def test_vqa_evaluator_modes_and_errors() -> None:
    refs = {1: VQATarget({"2": 0.9, "3": 0.3}, ["2"] * 3 + ["3"] * 2 + ["two"] * 5), 2: VQATarget({"red": 1.0})}
    preds = {"1": "two", "2": "red"}
    assert evaluate_task("vqa", preds, refs) == {"vqa_score": pytest.approx(95.0)}  # (0.9 + 1.0) / 2
    assert evaluate_task("vqa", preds, refs, vqa_mode="label") == {"vqa_score": pytest.approx(50.0)}  # (0 + 1) / 2
    assert evaluate_task("vqa", {"1": "2", "2": "red"}, refs, vqa_mode="label")["vqa_score"] == pytest.approx(95.0)
    assert evaluate_task("vqa", {"a": "yes"}, {"a": ["yes"] * 2 + ["no"] * 8})["vqa_score"] == pytest.approx(60.0)
    with pytest.raises(ValueError, match=r"has no raw answers; expected the 10 human answers"):
        VQAEvaluator("raw").evaluate(preds, refs)
    with pytest.raises(ValueError, match=r"1 reference id\(s\) without prediction \(e.g. \['2'\]\)"):
        evaluate_task("vqa", {"1": "two"}, refs)
    with pytest.raises(ValueError, match=r"1 prediction id\(s\) without reference \(e.g. \['9'\]\)"):
        evaluate_task("vqa", {**preds, "9": "x"}, refs)
    with pytest.raises(ValueError, match=r"no reference \(an unlabelled split\?\)"):
        evaluate_task("vqa", {"1": "x"}, {"1": None})


def test_gqa_exact_match() -> None:
    refs = {"1": "yes", "2": "no", "3": {"red": 1.0}, "4": "white"}
    preds = {"1": "yes", "2": " yes", "3": "red ", "4": "White"}  # surrounding spaces ignored, case is not
    assert evaluate_task("gqa", preds, refs) == {"gqa_acc": pytest.approx(50.0)}


def test_nlvr2_accuracy_and_consistency() -> None:
    refs = {"u1": "true", "u2": "false", "u3": "true", "u4": "false"}
    preds = {"u1": " True", "u2": "false", "u3": "maybe", "u4": 0}  # "maybe" is wrong, 0 means false
    ids = {"u1": "test-0-0-0", "u2": "test-0-1-0", "u3": "test-1-0-0", "u4": "test-1-1-0"}
    assert evaluate_task("nlvr2", preds, refs) == {"nlvr2_acc": 75.0}
    scores = evaluate_task("nlvr", preds, refs, nlvr2_identifiers=ids)
    assert scores == {"nlvr2_acc": 75.0, "nlvr2_consistency": 50.0}  # sentence test-0 right twice, test-1 not


def test_video_multiple_choice_accuracy() -> None:
    assert evaluate_task("tvqa", {7: "a0", 8: "a2"}, {"7": "a0", "8": "a1"}) == {"tvqa_acc": 50.0}
    assert evaluate_task("how2qa", {"h1": "a3 "}, {"h1": "a3"}) == {"how2qa_acc": 100.0}
