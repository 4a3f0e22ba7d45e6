"""Video tasks on VALUE (upstream HenryHZY/VL-PET@7430cad ``src/video/{tvqa,tvc,yc2c}_data.py`` and the VL-Adapter
``how2qa_data.py``), features from :class:`~vl_adapter_vlpet.data.features.NpzVideoFeatureStore`.

Under ``<root>/video`` (or ``<root>``): subtitles ``ann/{tv,how2,yc2}_subtitles.jsonl`` (``{"vid_name", "sub":
[{"text", "start", "end"}]}`` per line) and annotations ``ann/<task>/<task>_<split>.jsonl``:

* TVQA (``tv``): ``{"qid", "vid_name", "show_name", "q", "a0".."a4", "answer_idx", "ts"}``; How2QA (``how2``): the
  same with ``a0``..``a3``. Input ``"[Subs] <subtitles> [Q] <q> [TS] (<ts>) [Choices] a0: <a0>. a1: ..."`` then
  ``" tvqa: "`` (the prompt follows the text) truncated to 600 tokens; target ``"a<answer_idx>"``. Id ``qid``.
* TVC (``tv``): ``{"vid_name", "duration", "ts", "clip_id", "descs": [{"desc", "desc_id", "type"}]}``; YC2C
  (``yc2``): the same without ``ts``. Input ``"[Subs] <subtitles> [TS] (<ts>)"`` (YC2C: no ``[TS]``) then the
  prompt; one item per description (id ``desc_id``, target the description truncated to 20 tokens, reference
  ``[desc]``, as upstream scores each description separately); a clip without ``descs`` (test) is one item (id
  ``clip_id``) without target.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vl_adapter_vlpet.data.base import Record
from vl_adapter_vlpet.data.errors import DataFormatError, read_jsonl, require
from vl_adapter_vlpet.data.tasks import task_spec

SUBTITLES = {"tvqa": "tv_subtitles.jsonl", "tvc": "tv_subtitles.jsonl", "how2qa": "how2_subtitles.jsonl",
             "yc2c": "yc2_subtitles.jsonl"}
CHOICES = {"tvqa": 5, "how2qa": 4}
SUB_FORMAT = "JSON lines {'vid_name', 'sub': [{'text', 'start', 'end'}]}"


def load_subtitles(path: Path) -> dict[str, str]:
    """``{vid_name: "t1 t2 ..."}`` (subtitle texts stripped and joined by spaces)."""
    subs = {}
    for i, row in enumerate(read_jsonl(path, SUB_FORMAT)):
        require(row, ("vid_name", "sub"), f"{path}, row {i + 1}", SUB_FORMAT)
        if not isinstance(row["sub"], list) or not all(isinstance(t, dict) and "text" in t for t in row["sub"]):
            raise DataFormatError(f"{path}, row {i + 1}: 'sub' must be a list of {{'text', ...}}; "
                                  f"expected {SUB_FORMAT}")
        subs[str(row["vid_name"])] = " ".join(str(t["text"]).strip() for t in row["sub"])
    return subs


def _subs(subs: dict[str, str], vid: str, where: str, path: Path) -> str:
    if vid not in subs:
        raise DataFormatError(f"{where}: video {vid!r} has no subtitles in {path}; expected one line per video")
    return f"[Subs] {subs[vid]}"


def _qa_record(task: str, row: dict[str, Any], subs_text: str, where: str) -> Record:
    n = CHOICES[task]
    choices = [f"a{i}" for i in range(n)]
    fmt = f"JSON lines {{'qid', 'vid_name', 'q', {', '.join(map(repr, choices))}, 'ts', 'answer_idx'}}"
    require(row, ("qid", "vid_name", "q", "ts", *choices), where, fmt)
    listed = " ".join(f"{c}: {str(row[c]).strip('. ')}." for c in choices)
    text = " ".join([subs_text, f"[Q] {str(row['q']).strip()}", f"[TS] ({row['ts']})", f"[Choices] {listed}"])
    answer = None
    if "answer_idx" in row:
        if row["answer_idx"] not in range(n):
            raise DataFormatError(f"{where}: answer_idx {row['answer_idx']!r} is not in 0..{n - 1}; expected {fmt}")
        answer = f"a{row['answer_idx']}"
    return Record(str(row["qid"]), text, (str(row["vid_name"]),), target=answer, answer=answer,
                  extra={"type": row.get("show_name", task)})


def _caption_records(task: str, row: dict[str, Any], subs_text: str, where: str) -> list[Record]:
    keys = ("vid_name", "ts") if task == "tvc" else ("vid_name",)
    fmt = "JSON lines {'vid_name', 'clip_id', 'duration'" + (", 'ts'" if task == "tvc" else "") + \
        ", 'descs': [{'desc', 'desc_id'}]}"
    require(row, keys, where, fmt)
    text = " ".join([subs_text, f"[TS] ({row['ts']})"]) if task == "tvc" else subs_text
    vid = (str(row["vid_name"]),)
    if "descs" not in row:
        require(row, ("clip_id",), where, fmt)
        return [Record(str(row["clip_id"]), text, vid, extra={"clip_id": row["clip_id"]})]
    out = []
    for k, desc in enumerate(row["descs"]):
        require(desc, ("desc", "desc_id"), f"{where}, desc {k}", fmt)
        out.append(Record(str(desc["desc_id"]), text, vid, target=[str(desc["desc"])], answer=str(desc["desc"]),
                          extra={"clip_id": row.get("clip_id")}))
    return out


def load_video(task: str, video_dir: str | Path, split: str) -> list[Record]:
    """Records of a video task's split (comma-separated split names concatenated)."""
    name = task_spec(task).name
    ann = Path(video_dir) / "ann"
    sub_path = ann / SUBTITLES[name]
    subs = load_subtitles(sub_path)
    records: list[Record] = []
    for part in split.split(","):
        path = ann / name / f"{name}_{part}.jsonl"
        for i, row in enumerate(read_jsonl(path, f"the {name} annotations (JSON lines)")):
            where = f"{path}, row {i + 1}"
            require(row, ("vid_name",), where, "JSON lines with 'vid_name'")
            subs_text = _subs(subs, str(row["vid_name"]), where, sub_path)
            if name in CHOICES:
                records.append(_qa_record(name, row, subs_text, where))
            else:
                records += _caption_records(name, row, subs_text, where)
    return records
