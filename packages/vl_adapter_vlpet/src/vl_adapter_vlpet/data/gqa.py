"""GQA (upstream HenryHZY/VL-PET@7430cad ``src/gqa_clip_data.py``).

``<root>/GQA/<split>.json`` (``train``, ``valid``, ``testdev``, ``submit``; comma-separated names concatenated) is a
list of ``{"img_id": "2375429", "label": {"pipe": 1.0}, "question_id": "07333408", "sent": "What is on the white
wall?"}``. Input ``"gqa: " + sent`` truncated to 20 tokens (upstream prompt ``"gpa: "``, see
:mod:`vl_adapter_vlpet.data.tasks`); target the drawn answer, not truncated. Features: ``train`` / ``valid`` images
from the VG store, ``testdev`` / ``submit`` from the GQA store. The reference is the highest-scored answer (GQA labels
hold one answer with score 1.0), ``None`` without a label.
"""

from __future__ import annotations

from pathlib import Path

from vl_adapter_vlpet.data.base import Record
from vl_adapter_vlpet.data.errors import label_dict, read_json_list, require
from vl_adapter_vlpet.data.sources import annotation_path

FORMAT = "a JSON list of {question_id, img_id, sent, label: {answer: score}} (upstream datasets/GQA/<split>.json)"


def load_gqa(root: str | Path, split: str) -> list[Record]:
    records = []
    for part in split.split(","):
        path = annotation_path(root, "GQA", f"{part}.json")
        for i, datum in enumerate(read_json_list(path, FORMAT)):
            where = f"{path}, entry {i}"
            require(datum, ("question_id", "img_id", "sent"), where, FORMAT)
            label = label_dict(datum.get("label"), where, FORMAT)
            target = max(label, key=label.__getitem__) if label else None
            records.append(Record(str(datum["question_id"]), str(datum["sent"]), (str(datum["img_id"]),),
                                  target=target, label=label))
    return records
