"""COCO captioning on the Karpathy split (upstream HenryHZY/VL-PET@7430cad ``src/caption_clip_data.py``).

``<root>/COCO/dataset_coco.json`` is Karpathy's file: ``{"images": [{"filename": "COCO_val2014_000000391895.jpg",
"split": "train" | "restval" | "val" | "test", "sentences": [{"raw": "A man ..."}, ...]}, ...]}``. The split name's
last ``_`` part selects the images (``karpathy_train`` -> ``train`` + ``restval``, ``karpathy_val`` -> ``val``,
``karpathy_test`` -> ``test``); the image id is the file name without extension.

Training splits give one item per caption (id ``<img_id>#<k>``, target that caption truncated to 40 tokens);
evaluation splits one item per image (id ``<img_id>``) with no training target. The reference is every caption of
the image (stripped). The input is the prompt alone (``"caption: "``, truncated to 40 tokens: upstream
``caption_args.max_text_length = 40``).
"""

from __future__ import annotations

from pathlib import Path

from vl_adapter_vlpet.data.base import Record
from vl_adapter_vlpet.data.errors import DataFormatError, read_json, require
from vl_adapter_vlpet.data.sources import annotation_path

FORMAT = ("Karpathy's dataset_coco.json {'images': [{'filename', 'split': train|restval|val|test, 'sentences': "
          "[{'raw'}]}]}")
SPLIT_RENAME = {"train": "train", "restval": "train", "val": "val", "test": "test"}


def load_caption(root: str | Path, split: str) -> list[Record]:
    path = annotation_path(root, "COCO", "dataset_coco.json")
    data = read_json(path, FORMAT)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataFormatError(f"{path}: no 'images' list; expected {FORMAT}")
    wanted = {part.split("_")[-1] for part in split.split(",")}
    unknown = wanted - set(SPLIT_RENAME.values())
    if unknown:
        raise DataFormatError(f"{path}: split {split!r} selects {sorted(unknown)}; expected karpathy_train, "
                              "karpathy_val or karpathy_test")
    records = []
    for i, datum in enumerate(data["images"]):
        where = f"{path}, image {i}"
        require(datum, ("filename", "split", "sentences"), where, FORMAT)
        if datum["split"] not in SPLIT_RENAME:
            raise DataFormatError(f"{where}: split {datum['split']!r}; expected one of {sorted(SPLIT_RENAME)}")
        part = SPLIT_RENAME[datum["split"]]
        if part not in wanted:
            continue
        sentences = datum["sentences"]
        if not isinstance(sentences, list) or not all(isinstance(s, dict) and "raw" in s for s in sentences):
            raise DataFormatError(f"{where}: 'sentences' must be a list of {{'raw': caption}}; expected {FORMAT}")
        img_id = str(datum["filename"]).rsplit(".", 1)[0]
        refs = [str(s["raw"]).strip() for s in sentences]
        if part == "train":
            records += [Record(f"{img_id}#{k}", "", (img_id,), target=refs, answer=ref) for k, ref in enumerate(refs)]
        else:
            records.append(Record(img_id, "", (img_id,), target=refs))
    return records
