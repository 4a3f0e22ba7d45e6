"""VQA soft score, as upstream's ``VQAEvaluator`` (HenryHZY/VL-PET@7430cad ``src/vqa_clip_data.py``, a port of the
official GT-Vision-Lab/VQA ``vqaEval.py``).

Official score (``evaluate_raw``; the Karpathy-test number the paper reports), per question with 10 human answers
``g_1..g_10`` and the prediction ``p``::

    p' = digits_articles(punctuation(strip(p)))           answer normalisation (below)
    g' = punctuation(g) if the 10 answers are not all equal, else g
    score = 1/10 * sum_i min(1, #{j != i : g'_j == p'} / 3)   (average over the 10 leave-one-out subsets)

``punctuation``: each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is deleted if it touches a space or the
text contains a digit-comma-digit, else replaced by a space; then periods not next to digits are deleted (the
official regex ``(?!<=\\d)(\\.)(?!\\d)`` with its ``re.UNICODE`` passed as ``count``: at most 32 periods).
``digits_articles``: lower case, number words ``none``/``zero``..``ten`` -> ``0``..``10``, articles ``a an the``
dropped, contractions without apostrophe restored (``dont`` -> ``don't``).

Label score (``evaluate``; upstream's validation "topk" score): ``label.get(p, 0)`` with the Karpathy files' soft
scores, no normalisation. A reference with raw answers (a :class:`~vl_adapter_vlpet.data.base.VQATarget` with
``answers`` or a plain list of 10 strings) is scored officially, a ``{answer: score}`` dict by label. Reported x100.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from vl_adapter_vlpet.evaluation.common import aligned

CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
           "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = ("a", "an", "the")
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?",
               "!")
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
OFFICIAL_PERIOD_COUNT = re.UNICODE  # the official code passes re.UNICODE (32) as ``count`` of ``sub``


def process_punctuation(text: str) -> str:
    out = text
    digit_comma = COMMA_STRIP.search(text) is not None
    for p in PUNCTUATION:
        if p + " " in text or " " + p in text or digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return PERIOD_STRIP.sub("", out, count=int(OFFICIAL_PERIOD_COUNT))


def process_digit_article(text: str) -> str:
    words = [NUMBERS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_answer(answer: str) -> str:
    """The official normalisation of a predicted answer."""
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(answer))


def official_score(prediction: str, answers: Sequence[str]) -> float:
    """Leave-one-out VQA accuracy of one prediction against the human answers (module docstring), in [0, 1]."""
    if not answers:
        raise ValueError("official VQA score needs at least one human answer")
    pred = normalize_answer(prediction)
    gts = [process_punctuation(a) for a in answers] if len(set(answers)) > 1 else list(answers)
    accs = [min(1.0, sum(1 for j, g in enumerate(gts) if j != i and g == pred) / 3) for i in range(len(gts))]
    return sum(accs) / len(accs)


def label_score(prediction: str, label: Mapping[str, float]) -> float:
    """Upstream's label lookup: the soft score of the (unnormalised) prediction, 0 if absent."""
    return float(label.get(prediction, 0.0))


class VQAEvaluator:
    """``evaluate(predictions, references) -> {"vqa_score": %}``; ``mode``: ``auto`` (raw answers when the reference
    has them, else the label), ``raw`` (require raw answers) or ``label`` (always the label)."""

    def __init__(self, mode: str = "auto") -> None:
        if mode not in ("auto", "raw", "label"):
            raise ValueError(f"mode={mode!r} is not allowed; expected 'auto', 'raw' or 'label'")
        self.mode = mode

    def score(self, prediction: str, reference: Any) -> float:
        answers = getattr(reference, "answers", None)
        if isinstance(reference, list | tuple):
            answers = reference
        if self.mode != "label" and answers is not None:
            return official_score(prediction, [str(a) for a in answers])
        if self.mode == "raw":
            raise ValueError(f"reference {reference!r} has no raw answers; expected the 10 human answers (mode='raw')")
        if not isinstance(reference, Mapping):
            raise ValueError(f"reference {reference!r} is neither a {{answer: score}} label nor a list of answers")
        return label_score(prediction, reference)

    def evaluate(self, predictions: Mapping[Any, str], references: Mapping[Any, Any]) -> dict[str, float]:
        rows = aligned("vqa", predictions, references)
        return {"vqa_score": 100.0 * sum(self.score(str(p), r) for _, p, r in rows) / len(rows)}
