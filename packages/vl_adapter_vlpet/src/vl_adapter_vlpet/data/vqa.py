"""VQA v2 on the Karpathy splits (upstream HenryHZY/VL-PET@7430cad ``src/vqa_clip_data.py``).

``<root>/vqa/<split>.json`` (``karpathy_train`` / ``karpathy_val`` / ``karpathy_test``; comma-separated names are
concatenated) is a list of::

    {"question_id": 458752000, "img_id": "COCO_train2014_000000458752", "sent": "What is this photo taken looking
     through?", "label": {"net": 1}, "answer_type": "other", "question_type": "what is this"}

Input ``"vqa: " + sent`` truncated to 20 tokens, target the drawn answer truncated to 10 tokens (upstream
``max_length=20`` / ``10``), features of ``img_id`` from the COCO store.

References: the label (the Karpathy files' soft scores) plus, for evaluation splits with ``vqa_eval="raw"``
(default), the 10 raw answers that upstream's test evaluation (``VQAEvaluator.evaluate_raw``, the number the paper
reports) reads from ``<root>/vqa/v2_mscoco_{train,val}2014_annotations.json`` (``{"annotations": [{"question_id",
"answers": [{"answer", "answer_confidence", "answer_id"}], ...}]}``); an ``answers`` field in the split file itself is
used first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vl_adapter_vlpet.data.base import Record, VQATarget
from vl_adapter_vlpet.data.errors import DataFormatError, label_dict, read_json, read_json_list, require
from vl_adapter_vlpet.data.sources import annotation_path

FORMAT = ("a JSON list of {question_id, img_id, sent, label: {answer: score}} (upstream datasets/vqa/"
          "karpathy_*.json)")
RAW_FILES = ("v2_mscoco_train2014_annotations.json", "v2_mscoco_val2014_annotations.json")
RAW_FORMAT = "the VQA v2 annotations {'annotations': [{'question_id', 'answers': [{'answer', ...}] x 10}]}"

_RAW_CACHE: dict[tuple[str, float], dict[str, list[str]]] = {}


def _answer_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise DataFormatError(f"{where}: 'answers' is {type(value).__name__}; expected a non-empty list of answers")
    out = []
    for a in value:
        if isinstance(a, dict) and "answer" in a:
            out.append(str(a["answer"]))
        elif isinstance(a, str):
            out.append(a)
        else:
            raise DataFormatError(f"{where}: answer {a!r} is neither a string nor {{'answer': ...}}")
    return out


def raw_answers(vqa_dir: Path) -> dict[str, list[str]]:
    """``{question_id: [10 raw answers]}`` from the VQA v2 train / val annotation files (cached per file)."""
    merged: dict[str, list[str]] = {}
    found = False
    for name in RAW_FILES:
        path = vqa_dir / name
        if not path.is_file():
            continue
        found = True
        key = (str(path), path.stat().st_mtime)
        if key not in _RAW_CACHE:
            data = read_json(path, RAW_FORMAT)
            if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
                raise DataFormatError(f"{path}: no 'annotations' list; expected {RAW_FORMAT}")
            table = {}
            for i, ann in enumerate(data["annotations"]):
                require(ann, ("question_id", "answers"), f"{path}, annotation {i}", RAW_FORMAT)
                table[str(ann["question_id"])] = _answer_list(ann["answers"], f"{path}, annotation {i}")
            _RAW_CACHE[key] = table
        merged.update(_RAW_CACHE[key])
    if not found:
        raise DataFormatError(f"{vqa_dir}: none of {list(RAW_FILES)} found; expected {RAW_FORMAT} (needed for the "
                              "official VQA score; set data.vqa_eval=label to score with the Karpathy labels)")
    return merged


def load_vqa(root: str | Path, split: str, with_raw_answers: bool) -> list[Record]:
    """Records of ``split`` (see the module docstring)."""
    records: list[Record] = []
    raw: dict[str, list[str]] | None = None
    for part in split.split(","):
        path = annotation_path(root, "vqa", f"{part}.json")
        for i, datum in enumerate(read_json_list(path, FORMAT)):
            where = f"{path}, entry {i}"
            require(datum, ("question_id", "img_id"), where, FORMAT)
            sent = datum.get("sent", datum.get("question"))
            if not isinstance(sent, str):
                raise DataFormatError(f"{where}: no question text ('sent' or 'question'); expected {FORMAT}")
            label = label_dict(datum.get("label"), where, FORMAT)
            qid = str(datum["question_id"])
            answers = None
            if with_raw_answers and label is not None:
                if "answers" in datum:
                    answers = _answer_list(datum["answers"], where)
                else:
                    raw = raw_answers(path.parent) if raw is None else raw
                    if qid not in raw:
                        raise DataFormatError(f"{where}: question_id {qid} is not in {list(RAW_FILES)} of "
                                              f"{path.parent}; expected the raw answers of every evaluated question")
                    answers = raw[qid]
            target = VQATarget(label, answers) if label is not None else None
            records.append(Record(qid, sent, (str(datum["img_id"]),), target=target, label=label))
    return records
