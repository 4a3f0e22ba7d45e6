"""Video list files: one ``path,label`` line per video (comma separated, no header), as upstream's ``ssv2/val.csv``.

    videos/brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi,0
    /data/ssv2/videos/1.webm,23

Space-separated lists (``path label``, what upstream's DATASET.md describes) are accepted too, with a notice; a file
mixing both is an error. Relative paths are resolved against ``video_root`` (default: the list file's folder).
Every problem raises :class:`ListFileError` naming the file, the line and the expected format.

Datasets (upstream bruceyo/V-PETL@661198dd38:datasets/video_datasets.py:build_dataset): HMDB51 (51 classes),
UCF101 (101), SSv2 (174), K400 (400); ``train.csv``, ``val.csv``, ``test.csv`` in the dataset folder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

FORMAT = "'<video path>,<integer label>' per line, comma separated, no header (e.g. 'videos/clip_001.mp4,3')"

NUM_CLASSES = {"hmdb51": 51, "ucf101": 101, "ssv2": 174, "k400": 400}
"""Classes per dataset name (names as in shared/baselines/v_petl.toml)."""


class ListFileError(ValueError):
    """A list file is missing or malformed (the message names the file, the line and the expected format)."""


@dataclass(frozen=True)
class VideoRecord:
    """One video: its resolved path, integer label, and the list line it came from (``file:line``)."""

    path: Path
    label: int
    origin: str


def _split(line: str, delimiter: str) -> list[str]:
    if delimiter == ",":
        return [part.strip() for part in line.rsplit(",", 1)]
    return line.rsplit(None, 1)


def _detect_delimiter(path: Path, first: str, lineno: int) -> str:
    if "," in first:
        return ","
    if len(first.split()) >= 2:
        log.warning("%s: read as a space-separated list ('path label', as upstream DATASET.md describes); the "
                    "canonical format is %s", path, FORMAT)
        return " "
    raise ListFileError(f"{path}, line {lineno}: {first!r} has no label; expected {FORMAT}")


def read_list(path: str | Path, *, num_classes: int | None = None, video_root: str | Path | None = None
              ) -> list[VideoRecord]:
    """Parse a list file into :class:`VideoRecord` s.

    Raises :class:`ListFileError` if the file is missing or empty, a line has no label or a non-integer label, a
    label is outside ``[0, num_classes)``, or comma and space separated lines are mixed.
    """
    path = Path(path)
    if not path.is_file():
        raise ListFileError(f"{path}: list file not found; expected a text file with {FORMAT}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ListFileError(f"{path}: cannot be read as UTF-8 text ({exc}); expected {FORMAT}") from None
    root = Path(video_root) if video_root is not None else path.parent
    records: list[VideoRecord] = []
    delimiter: str | None = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if delimiter is None:
            delimiter = _detect_delimiter(path, line, lineno)
        elif delimiter == " " and "," in line:
            raise ListFileError(f"{path}, line {lineno}: {line!r} is comma separated but earlier lines are space "
                                f"separated; expected one format for the whole file: {FORMAT}")
        parts = _split(line, delimiter)
        if len(parts) != 2 or not parts[0]:
            raise ListFileError(f"{path}, line {lineno}: {line!r} does not have a path and a label; expected {FORMAT}")
        name, label_text = parts
        try:
            label = int(label_text)
        except ValueError:
            hint = " (list files have no header line)" if lineno == 1 else ""
            raise ListFileError(f"{path}, line {lineno}: label {label_text!r} is not an integer{hint}; "
                                f"expected {FORMAT}") from None
        if label < 0 or (num_classes is not None and label >= num_classes):
            bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
            raise ListFileError(f"{path}, line {lineno}: label {label} is outside {bound}; expected {FORMAT}")
        video = Path(name)
        records.append(VideoRecord(video if video.is_absolute() else root / video, label, f"{path}:{lineno}"))
    if not records:
        raise ListFileError(f"{path}: the list file holds no videos; expected {FORMAT}")
    return records
