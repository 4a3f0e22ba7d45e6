"""Caption metrics (pycocoevalcap PTBTokenizer + CIDEr-D + BLEU-4, x100) against hand-derived values."""

from __future__ import annotations

import pytest
from pycocoevalcap.tokenizer import ptbtokenizer
from vl_adapter_vlpet.evaluation import CaptionEvaluator, evaluate_task, ptb_tokenize


def test_cider_hand_derived_case() -> None:
    """Two images, one reference each; df(red) = 2 so idf(red) = log 2 - log 2 = 0, every other n-gram idf log 2.

    image 1: "red cat" vs "red cat": cos = 1 for n = 1, 2 and 0 for n = 3, 4 (no such n-grams) -> 10 * 2/4 = 5.
    image 2: "red bird" vs "red dog": only "red" is shared and it weighs 0 -> 0.  CIDEr-D = (5 + 0) / 2 = 2.5.
    """
    scores = evaluate_task("caption", {"i1": "red cat", "i2": "red bird"}, {"i1": ["red cat"], "i2": ["red dog"]})
    assert scores["cider"] == pytest.approx(250.0)


def test_identical_captions_with_unique_ngrams_score_cider_10() -> None:
    preds = {"a": "the big red cat sleeps", "b": "one small dog runs fast"}
    refs = {"a": ["the big red cat sleeps"], "b": ["one small dog runs fast"]}
    scores = CaptionEvaluator().evaluate(preds, refs)
    assert scores["cider"] == pytest.approx(1000.0)  # cosine 1 for every n = 1..4, times 10, x100
    assert scores["bleu4"] == pytest.approx(100.0, rel=1e-6)


def test_bleu4_hand_derived_case_and_single_image_cider() -> None:
    """precisions 5/6, 3/5, 2/4, 1/3, equal lengths (no brevity penalty): BLEU-4 = (1/12)^(1/4)."""
    scores = evaluate_task("caption", {"x": "the cat sat on the mat"}, {"x": ["the cat sat on a mat"]})
    assert scores["bleu4"] == pytest.approx(100 * (1 / 12) ** 0.25, rel=1e-6)
    assert scores["cider"] == 0.0  # one image: every idf is log(1) - log(1) = 0


def test_ptb_tokenization_lowercases_and_drops_punctuation() -> None:
    tokens = ptb_tokenize({"1": ["A Dog, running."], "2": ["it's fine!", ""]})
    assert tokens == {"1": ["a dog running"], "2": ["it 's fine", ""]}
    same = evaluate_task("caption", {"p": "A Red Cat.", "q": "One small DOG"},
                         {"p": ["a red cat"], "q": ["one small dog"]})
    assert same["bleu4"] == pytest.approx(CaptionEvaluator().evaluate(
        {"p": "a red cat", "q": "one small dog"}, {"p": ["a red cat"], "q": ["one small dog"]})["bleu4"])


def test_multiple_references_and_video_tasks() -> None:
    preds = {"a": "a dog runs on grass", "b": "a cat sleeps on a sofa"}
    refs = {"a": ["a dog runs on the grass", "the dog is running"], "b": "a cat sleeps on a sofa"}
    coco = evaluate_task("caption", preds, refs)
    assert evaluate_task("tvc", preds, refs) == coco  # same metric for TVC / YC2C
    assert 0.0 < coco["bleu4"] < 100.0 and coco["cider"] > 0.0
    with pytest.raises(ValueError, match=r"empty reference list"):
        evaluate_task("yc2c", {"a": "x"}, {"a": []})


def test_read_only_install_falls_back_to_a_temporary_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    captions = {"1": ["A Dog, running."], "2": ["two cats"]}
    expected = ptb_tokenize(captions)

    def read_only(*args: object, **kwargs: object) -> None:
        raise PermissionError("read-only file system")

    monkeypatch.setattr(ptbtokenizer.tempfile, "NamedTemporaryFile", read_only)
    assert ptb_tokenize(captions) == expected


def test_missing_java_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    with pytest.raises(RuntimeError, match=r"PTBTokenizer needs Java"):
        ptb_tokenize({"1": ["a dog"]})
