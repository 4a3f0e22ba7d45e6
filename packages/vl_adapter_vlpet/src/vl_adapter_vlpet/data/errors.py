"""The one error type of the data layer, and readers of JSON / JSON-lines annotation files that raise it."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


class DataFormatError(ValueError):
    """A data file is missing or malformed: the message names the path (and id / key / line) and what was expected."""


def read_json(path: Path, expected: str) -> Any:
    """Parse a JSON file; ``expected`` describes its format for the error message."""
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found; expected {expected}")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataFormatError(f"{path}: cannot be read as JSON ({exc}); expected {expected}") from None


def read_json_list(path: Path, expected: str) -> list[dict[str, Any]]:
    """A JSON file holding a list of objects."""
    data = read_json(path, expected)
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise DataFormatError(f"{path}: top level is {type(data).__name__}, not a list of objects; "
                              f"expected {expected}")
    return data


def read_jsonl(path: Path, expected: str) -> list[dict[str, Any]]:
    """A JSON-lines file (one object per non-empty line)."""
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found; expected {expected}")
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataFormatError(f"{path}, line {lineno}: not valid JSON ({exc}); expected {expected}") from None
            if not isinstance(row, dict):
                raise DataFormatError(f"{path}, line {lineno}: a {type(row).__name__}, not an object; "
                                      f"expected {expected}")
            rows.append(row)
    return rows


def label_dict(value: Any, where: str, expected: str) -> dict[str, float] | None:
    """A ``{answer: score}`` label as floats (``None`` stays ``None``)."""
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(v, int | float) for v in value.values()):
        raise DataFormatError(f"{where}: label {value!r} is not a {{answer: score}} mapping; expected {expected}")
    return {str(k): float(v) for k, v in value.items()}


def require(datum: Mapping[str, Any], keys: Iterable[str], where: str, expected: str) -> None:
    """Raise if ``datum`` lacks one of ``keys``; ``where`` names the file and entry (``path, entry 3``)."""
    missing = [k for k in keys if k not in datum]
    if missing:
        raise DataFormatError(f"{where}: missing key(s) {missing} (has {sorted(datum)}); expected {expected}")
