"""NLVR2 (upstream HenryHZY/VL-PET@7430cad ``src/nlvr_clip_data.py``).

``<root>/nlvr/<split>.json`` (``train`` / ``valid`` / ``test``) is a list of ``{"identifier": "train-10171-0-0",
"img0": "train-10171-0-img0", "img1": "train-10171-0-img1", "label": 0, "sent": "An image shows ...", "uid":
"nlvr2_train_0"}``. Input ``"nlvr: " + sent``, not truncated (upstream encodes it without ``max_length``); target
``"true"`` (label 1) or ``"false"`` (label 0); both images' features, pooled separately and concatenated (72
tokens) with image-order ids 0 / 1. Ids are the ``uid``; ``identifier`` is kept for the consistency metric.
"""

from __future__ import annotations

from pathlib import Path

from vl_adapter_vlpet.data.base import Record
from vl_adapter_vlpet.data.errors import DataFormatError, read_json_list, require
from vl_adapter_vlpet.data.sources import annotation_path

FORMAT = "a JSON list of {uid, identifier, img0, img1, sent, label: 0|1} (upstream datasets/nlvr/<split>.json)"


def load_nlvr2(root: str | Path, split: str) -> list[Record]:
    records = []
    for part in split.split(","):
        path = annotation_path(root, "nlvr", f"{part}.json")
        for i, datum in enumerate(read_json_list(path, FORMAT)):
            where = f"{path}, entry {i}"
            require(datum, ("uid", "img0", "img1", "sent"), where, FORMAT)
            label = datum.get("label")
            if label is not None and label not in (0, 1):
                raise DataFormatError(f"{where}: label {label!r} is not 0 or 1; expected {FORMAT}")
            answer = None if label is None else ("true" if label == 1 else "false")
            records.append(Record(str(datum["uid"]), str(datum["sent"]), (str(datum["img0"]), str(datum["img1"])),
                                  target=answer, answer=answer,
                                  extra={"identifier": str(datum.get("identifier", datum["uid"]))}))
    return records
