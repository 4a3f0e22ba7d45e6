"""Captioning metrics with pycocoevalcap, as the coco-caption evaluation upstream ran (HenryHZY/VL-PET@7430cad
``src/caption_clip_data.py:COCOCaptionEvaluator`` -> ``language_evaluation.CocoEvaluator``, which tokenizes
predictions and references with the Stanford ``PTBTokenizer`` and scores them with coco-caption's ``Bleu(4)`` and
``Cider``; TVC / YC2C use the same with CIDEr only).

``Cider`` is coco-caption's CIDEr-D: per image and n = 1..4, TF-IDF n-gram vectors ``g(s)`` (IDF from the
references of the evaluated set), clipped similarity and a length penalty::

    CIDEr-D_n(c, S) = 10 / |S| * sum_{s in S} exp(-(l_c - l_s)^2 / 72) * <min(g(c), g(s)), g(s)> / (|g(c)| |g(s)|)
    CIDEr-D(c, S) = 1/4 * sum_n CIDEr-D_n(c, S);   corpus score = mean over images

BLEU-4 is the corpus BLEU with the "closest" reference length. Both are reported x100 (the paper's CIDEr 122.03 is
1.2203 x 100). Needs Java on ``PATH`` (PTBTokenizer runs the Stanford CoreNLP jar shipped with pycocoevalcap).
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.tokenizer import ptbtokenizer
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from vl_adapter_vlpet.evaluation.common import aligned


def _tokenize_in_tempdir(captions: dict[Hashable, list[dict[str, str]]]) -> dict[Hashable, list[str]]:
    """PTBTokenizer's command, run with the shipped jar from a temporary folder (for a read-only install)."""
    jar = Path(ptbtokenizer.__file__).with_name(ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)
    keys = [k for k, caps in captions.items() for _ in caps]
    text = "\n".join(c["caption"].replace("\n", " ") for caps in captions.values() for c in caps)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "captions.txt"
        source.write_text(text, encoding="utf-8")
        cmd = ["java", "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase",
               str(source)]
        lines = subprocess.run(cmd, capture_output=True, check=True).stdout.decode().split("\n")
    out: dict[Hashable, list[str]] = {}
    for key, line in zip(keys, lines):
        out.setdefault(key, []).append(" ".join(w for w in line.rstrip().split(" ")
                                                if w not in ptbtokenizer.PUNCTUATIONS))
    return out


def ptb_tokenize(captions: Mapping[Hashable, Sequence[str]]) -> dict[Hashable, list[str]]:
    """``{id: [caption, ...]}`` -> PTB-tokenized, lower-cased, punctuation removed (pycocoevalcap's tokenizer).

    Captions the tokenizer drops (trailing empty lines) come back empty."""
    wrapped = {k: [{"caption": str(c)} for c in caps] for k, caps in captions.items()}
    try:
        try:
            tokens = PTBTokenizer().tokenize(wrapped)
        except FileNotFoundError:
            raise
        except OSError:  # PTBTokenizer writes its input file next to the jar: not possible in a read-only install
            tokens = _tokenize_in_tempdir(wrapped)
    except FileNotFoundError as exc:
        raise RuntimeError(f"PTBTokenizer needs Java (a JRE 8+ 'java' on PATH): {exc}") from None
    out = {}
    for key, caps in captions.items():
        got = tokens.get(key, [])
        out[key] = got + [""] * (len(caps) - len(got))
    return out


class CaptionEvaluator:
    """``evaluate(predictions, references) -> {"cider": x100, "bleu4": x100}``; references are lists of captions
    (a single string is one reference)."""

    def __init__(self, task: str = "caption") -> None:
        self.task = task

    def evaluate(self, predictions: Mapping[Any, str], references: Mapping[Any, Any]) -> dict[str, float]:
        rows = aligned(self.task, predictions, references)
        refs = {k: [r] if isinstance(r, str) else [str(x) for x in r] for k, _, r in rows}
        empty = [k for k, v in refs.items() if not v]
        if empty:
            raise ValueError(f"{self.task}: item(s) {empty[:3]} have an empty reference list; expected >= 1 caption")
        tokens = ptb_tokenize({**{("ref", k): v for k, v in refs.items()},  # one Java run for both sides
                               **{("hyp", k): [str(p)] for k, p, _ in rows}})
        gts = {k: tokens[("ref", k)] for k in refs}
        res = {k: tokens[("hyp", k)] for k, _, _ in rows}
        cider, _ = Cider().compute_score(gts, res)
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        return {"cider": 100.0 * float(cider), "bleu4": 100.0 * float(bleu[3])}

