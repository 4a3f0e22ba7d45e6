"""Upstream baseline tables (``shared/baselines/<system>.toml``): discovery, loading and validation.

One TOML file per upstream system. Layout (see ``docs/baselines_and_compare.md``)::

    schema_version = 1
    system = "vl_pet"                      # must equal the file stem
    description = "..."                    # optional

    [metrics]                              # every metric used by a row, with its definition
    vqa_score = "VQA soft accuracy (%)"

    [[group]]                              # fields given here are defaults for the group's rows
    source = "paper Table 2"
    backbone = "bart-base"
    dataset = "vqa"
    split = "karpathy_test"
    rows = [
      { method = "lora", trainable_percent = 5.93, metrics = { vqa_score = 65.15 } },
    ]

Each loaded :class:`BaselineRow` is one (source, method, backbone, dataset, split) with its metrics. A dataset or
split of ``"*"`` marks a dataset-independent row (for example a parameter count) that matches any dataset/split.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

__all__ = [
    "ENV_VAR",
    "SCHEMA_VERSION",
    "WILDCARD",
    "BaselineError",
    "BaselineRow",
    "BaselineTable",
    "find_baselines_dir",
    "list_systems",
    "load_baselines",
    "read_table",
]

ENV_VAR = "VLPETL_BASELINES"
SCHEMA_VERSION = 1
WILDCARD = "*"

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.+\-]*$")
_METRIC_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_TOP_KEYS = {"schema_version", "system", "description", "metrics", "group"}
_STR_FIELDS = ("source", "method", "backbone", "dataset", "split")
_NAME_FIELDS = ("backbone", "dataset", "split")
_ROW_KEYS = {*_STR_FIELDS, "metrics", "trainable_percent", "trainable_params", "note"}
_GROUP_KEYS = {*_ROW_KEYS, "rows"}


class BaselineError(ValueError):
    """A baseline table is malformed; the message names the file, the row and the field."""


@dataclass(frozen=True)
class BaselineRow:
    """One published result: a (source, method, backbone, dataset, split) and its metric values."""

    system: str
    source: str
    method: str
    backbone: str
    dataset: str
    split: str
    metrics: Mapping[str, float] = field(hash=False)
    trainable_percent: float | None = None
    trainable_params: int | None = None
    note: str | None = None
    origin: str = field(default="", compare=False)
    """Where the row was read, e.g. ``vl_pet.toml group[0].rows[3]`` (not part of equality)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", MappingProxyType(dict(self.metrics)))

    @property
    def key(self) -> tuple[str, str, str, str, str, str]:
        """Identity of the row; two rows of one system never share it."""
        return (self.system, self.source, self.method, self.backbone, self.dataset, self.split)

    def matches(self, *, dataset: str, split: str, backbone: str) -> bool:
        """Whether a run on ``dataset``/``split``/``backbone`` is comparable with this row.

        Names are compared case-insensitively ignoring ``-``, ``_`` and spaces; ``"*"`` in the row matches anything.
        """
        return (
            normalize_name(self.backbone) == normalize_name(backbone)
            and (self.dataset == WILDCARD or normalize_name(self.dataset) == normalize_name(dataset))
            and (self.split == WILDCARD or normalize_name(self.split) == normalize_name(split))
        )


@dataclass(frozen=True)
class BaselineTable:
    """One parsed TOML file: its system, metric definitions and rows."""

    path: Path
    system: str
    description: str
    metrics: Mapping[str, str]
    rows: tuple[BaselineRow, ...]


def normalize_name(name: str) -> str:
    """Lower-case ``name`` and drop ``-``, ``_`` and whitespace (``"testA"`` == ``"test_a"``)."""
    return re.sub(r"[\s_\-]", "", name.lower())


# ---------------------------------------------------------------------------------------------------------------------
# discovery


def _candidate_dirs() -> list[Path]:
    """The repository's ``shared/baselines`` (source checkout), then the copy a wheel ships in ``peft_core/data``."""
    here = Path(__file__).resolve()
    return [*(parent / "shared" / "baselines" for parent in here.parents), here.parent / "data" / "baselines"]


def find_baselines_dir(root: Path | str | None = None) -> Path:
    """The baselines directory: ``root`` if given, else ``$VLPETL_BASELINES``, else the nearest ``shared/baselines``
    above this file. Raises :class:`FileNotFoundError` naming every path that was tried."""
    if root is not None:
        path = Path(root)
        if not path.is_dir():
            raise FileNotFoundError(f"baselines directory {path} does not exist (given explicitly)")
        return path
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env)
        if not path.is_dir():
            raise FileNotFoundError(f"baselines directory {path} does not exist (from ${ENV_VAR})")
        return path
    candidates = _candidate_dirs()
    for path in candidates:
        if path.is_dir():
            return path
    searched = "\n  ".join(str(p) for p in candidates)
    raise FileNotFoundError(
        f"no baselines directory found: ${ENV_VAR} is not set and none of these exist:\n  {searched}\n"
        f"pass root=... (CLI: --baselines DIR) or set ${ENV_VAR}"
    )


def list_systems(root: Path | str | None = None) -> list[str]:
    """Names of the systems that have a table (the ``*.toml`` stems), sorted."""
    return sorted(p.stem for p in find_baselines_dir(root).glob("*.toml"))


def load_baselines(system: str | None = None, root: Path | str | None = None) -> list[BaselineRow]:
    """Rows of ``system``'s table, or of every table when ``system`` is None, in file order.

    Raises :class:`FileNotFoundError` when the directory or the system's file is missing and :class:`BaselineError`
    when a table is malformed.
    """
    directory = find_baselines_dir(root)
    if system is None:
        paths = sorted(directory.glob("*.toml"))
    else:
        path = directory / f"{system}.toml"
        if not path.is_file():
            available = ", ".join(list_systems(directory)) or "none"
            raise FileNotFoundError(f"no baseline table {path} for system {system!r} (available: {available})")
        paths = [path]
    rows: list[BaselineRow] = []
    for path in paths:
        rows.extend(read_table(path).rows)
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# parsing and validation


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def read_table(path: Path | str) -> BaselineTable:
    """Parse and validate one baseline TOML file."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise BaselineError(f"{path}: not valid TOML: {exc}") from exc

    def fail(where: str, message: str) -> BaselineError:
        return BaselineError(f"{path}: {where}: {message}")

    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise fail(f"top-level key {unknown[0]!r}", f"unknown key; expected only {sorted(_TOP_KEYS)}")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise fail("field 'schema_version'", f"expected the integer {SCHEMA_VERSION}, got {_describe(version)}")
    system = data.get("system")
    if system != path.stem:
        raise fail("field 'system'", f"expected {path.stem!r} (the file name without .toml), got {_describe(system)}")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise fail("field 'description'", f"expected a string, got {_describe(description)}")

    metric_defs = data.get("metrics")
    if not isinstance(metric_defs, dict) or not metric_defs:
        raise fail("section [metrics]", "expected a non-empty table of metric name -> definition string")
    for name, definition in metric_defs.items():
        if not _METRIC_RE.match(name):
            raise fail(f"[metrics] key {name!r}", f"expected a name matching {_METRIC_RE.pattern}")
        if not isinstance(definition, str) or not definition.strip():
            expected = f"expected a non-empty definition string, got {_describe(definition)}"
            raise fail(f"[metrics] key {name!r}", expected)

    groups = data.get("group")
    if not isinstance(groups, list) or not groups:
        raise fail("[[group]]", "expected at least one [[group]] with a 'rows' array")

    rows: list[BaselineRow] = []
    seen: dict[tuple[str, ...], str] = {}
    for gi, group in enumerate(groups):
        where_group = f"group[{gi}]"
        if not isinstance(group, dict):
            raise fail(where_group, f"expected a table, got {_describe(group)}")
        unknown = sorted(set(group) - _GROUP_KEYS)
        if unknown:
            raise fail(f"{where_group} key {unknown[0]!r}", f"unknown key; expected some of {sorted(_GROUP_KEYS)}")
        group_rows = group.get("rows")
        if not isinstance(group_rows, list) or not group_rows:
            raise fail(f"{where_group} field 'rows'", "expected a non-empty array of row tables")
        defaults = {k: v for k, v in group.items() if k != "rows"}
        for ri, raw in enumerate(group_rows):
            where = f"{where_group}.rows[{ri}]"
            if not isinstance(raw, dict):
                raise fail(where, f"expected a table, got {_describe(raw)}")
            method = raw.get("method", defaults.get("method"))
            where_row = f"{where} (method {method!r})"
            fields = _parse_row({**defaults, **raw}, system, metric_defs, lambda msg, w=where_row: fail(w, msg))
            row = BaselineRow(**fields, origin=f"{path.name} {where}")
            key = row.key[1:]
            if key in seen:
                raise fail(
                    where_row,
                    f"duplicate row: (source, method, backbone, dataset, split) = {key} already given at {seen[key]}",
                )
            seen[key] = where
            rows.append(row)
    return BaselineTable(path, system, description, MappingProxyType(dict(metric_defs)), tuple(rows))


def _parse_row(
    raw: dict[str, Any], system: str, metric_defs: Mapping[str, str], fail: Callable[[str], BaselineError]
) -> dict[str, Any]:
    """Validate one row (group defaults already merged in) and return BaselineRow keyword arguments."""
    unknown = sorted(set(raw) - _ROW_KEYS)
    if unknown:
        raise fail(f"field {unknown[0]!r}: unknown field; expected some of {sorted(_ROW_KEYS)}")
    out: dict[str, Any] = {"system": system}
    for name in _STR_FIELDS:
        if name not in raw:
            raise fail(f"field {name!r}: missing; expected a non-empty string (in the row or in its group)")
        value = raw[name]
        if not isinstance(value, str) or not value.strip():
            raise fail(f"field {name!r}: expected a non-empty string, got {_describe(value)}")
        if name in _NAME_FIELDS and value != WILDCARD and not _NAME_RE.match(value):
            raise fail(f"field {name!r}: expected a lower-case name matching {_NAME_RE.pattern} or '*', got {value!r}")
        out[name] = value
    if out["backbone"] == WILDCARD:
        raise fail("field 'backbone': '*' is not allowed for a backbone; name the backbone")

    metrics = raw.get("metrics")
    if not isinstance(metrics, dict) or not metrics:
        raise fail(f"field 'metrics': expected a non-empty table of metric -> number, got {_describe(metrics)}")
    for name, value in metrics.items():
        if name not in metric_defs:
            raise fail(
                f"field 'metrics.{name}': metric {name!r} is not declared in [metrics] "
                f"(declared: {', '.join(metric_defs)})"
            )
        if not _is_number(value):
            raise fail(f"field 'metrics.{name}': expected a finite number, got {_describe(value)}")
    out["metrics"] = {k: float(v) for k, v in metrics.items()}

    percent = raw.get("trainable_percent")
    if percent is not None and (not _is_number(percent) or not 0 <= percent <= 100):
        raise fail(f"field 'trainable_percent': expected a number in [0, 100], got {_describe(percent)}")
    out["trainable_percent"] = None if percent is None else float(percent)
    params = raw.get("trainable_params")
    if params is not None and (not isinstance(params, int) or isinstance(params, bool) or params < 0):
        raise fail(f"field 'trainable_params': expected a non-negative integer, got {_describe(params)}")
    out["trainable_params"] = params
    note = raw.get("note")
    if note is not None and not isinstance(note, str):
        raise fail(f"field 'note': expected a string, got {_describe(note)}")
    out["note"] = note
    return out
