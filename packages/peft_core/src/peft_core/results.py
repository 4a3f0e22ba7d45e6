"""One JSON format for the results of a run (:class:`RunResult`), shared by every task package.

A result file is a JSON object; ``docs/baselines_and_compare.md`` documents it field by field and
:data:`RUN_RESULT_JSON_SCHEMA` describes it as a JSON Schema. Validation is hand-written (no jsonschema dependency):
every error names the file and the field, and says what was expected.
"""

from __future__ import annotations

import io
import json
import math
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any

from peft_core.io import atomic_write_text

__all__ = ["RUN_RESULT_JSON_SCHEMA", "SCHEMA_VERSION", "RunResult", "RunResultError"]

SCHEMA_VERSION = 1

_STR_FIELDS = ("system", "task", "dataset", "split", "method", "backbone", "package_version")
_OPTIONAL_FLOAT_FIELDS = ("wall_time_s", "peak_memory_mb")

RUN_RESULT_JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "vlpetl run result",
    "type": "object",
    "additionalProperties": False,
    "required": [
        "schema_version",
        "system",
        "task",
        "dataset",
        "split",
        "method",
        "backbone",
        "metrics",
        "trainable_params",
        "total_params",
        "package_version",
    ],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION, "description": "Version of this format."},
        "system": {"type": "string", "minLength": 1, "description": "Upstream system, = a baseline file stem."},
        "task": {"type": "string", "minLength": 1, "description": "Task family, e.g. 'vqa', 'retrieval'."},
        "dataset": {"type": "string", "minLength": 1, "description": "Dataset name as in the baseline tables."},
        "split": {"type": "string", "minLength": 1, "description": "Evaluation split as in the baseline tables."},
        "method": {"type": "string", "minLength": 1, "description": "peft_core preset (or method) name."},
        "backbone": {"type": "string", "minLength": 1, "description": "Backbone name as in the baseline tables."},
        "metrics": {
            "type": "object",
            "additionalProperties": {"type": "number"},
            "description": "Metric name -> finite value, names as declared in the baseline tables.",
        },
        "trainable_params": {"type": "integer", "minimum": 0, "description": "Trainable parameter count."},
        "total_params": {
            "type": "integer",
            "minimum": 0,
            "description": "All parameters (base + method); trainable % = 100 * trainable / total.",
        },
        "seed": {"type": ["integer", "null"]},
        "wall_time_s": {"type": ["number", "null"], "minimum": 0},
        "peak_memory_mb": {"type": ["number", "null"], "minimum": 0},
        "package_version": {"type": "string", "minLength": 1, "description": "Version of the package that ran."},
        "git_commit": {"type": ["string", "null"], "description": "`git rev-parse HEAD` of the code, if known."},
        "extra": {"type": "object", "description": "Free-form JSON: hyperparameters, notes, per-epoch logs."},
    },
}


class RunResultError(ValueError):
    """A run result is malformed; the message names the file (or object) and the field."""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Check a mapping against the format; return normalized keyword arguments for :class:`RunResult`."""

    def fail(name: str, expected: str) -> RunResultError:
        value = data.get(name, "<missing>")
        got = "missing" if name not in data else f"got {value!r} ({type(value).__name__})"
        return RunResultError(f"{source}: field {name!r}: expected {expected}, {got}")

    known = set(RUN_RESULT_JSON_SCHEMA["properties"])
    unknown = sorted(set(data) - known)
    if unknown:
        raise RunResultError(
            f"{source}: field {unknown[0]!r}: unknown field; expected only {sorted(known)} "
            "(put free-form data in 'extra')"
        )
    version = data.get("schema_version")
    if not _is_int(version) or version < 1:
        raise fail("schema_version", f"the integer {SCHEMA_VERSION}")
    if version > SCHEMA_VERSION:
        raise fail("schema_version", f"at most {SCHEMA_VERSION} (written by a newer peft_core; upgrade to read it)")

    out: dict[str, Any] = {"schema_version": version}
    for name in _STR_FIELDS:
        value = data.get(name)
        if not isinstance(value, str) or not value.strip():
            raise fail(name, "a non-empty string")
        out[name] = value

    metrics = data.get("metrics")
    if not isinstance(metrics, Mapping):
        raise fail("metrics", "an object of metric name -> number")
    out["metrics"] = {}
    for name, value in metrics.items():
        if not isinstance(name, str) or not name:
            raise RunResultError(f"{source}: field 'metrics': expected non-empty string keys, got {name!r}")
        if not _is_number(value) or not math.isfinite(value):
            raise RunResultError(
                f"{source}: field 'metrics.{name}': expected a finite number, got {value!r} ({type(value).__name__})"
            )
        out["metrics"][name] = float(value)

    for name in ("trainable_params", "total_params"):
        value = data.get(name)
        if not _is_int(value) or value < 0:
            raise fail(name, "a non-negative integer")
        out[name] = value
    if out["trainable_params"] > out["total_params"]:
        raise RunResultError(
            f"{source}: field 'trainable_params': expected at most total_params ({out['total_params']}), "
            f"got {out['trainable_params']}"
        )

    seed = data.get("seed")
    if seed is not None and not _is_int(seed):
        raise fail("seed", "an integer or null")
    out["seed"] = seed
    for name in _OPTIONAL_FLOAT_FIELDS:
        value = data.get(name)
        if value is not None and (not _is_number(value) or not math.isfinite(value) or value < 0):
            raise fail(name, "a non-negative finite number or null")
        out[name] = None if value is None else float(value)
    commit = data.get("git_commit")
    if commit is not None and (not isinstance(commit, str) or not commit):
        raise fail("git_commit", "a non-empty string or null")
    out["git_commit"] = commit

    extra = data.get("extra", {})
    if not isinstance(extra, Mapping):
        raise fail("extra", "an object")
    try:
        json.dumps(extra, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise RunResultError(f"{source}: field 'extra': expected JSON-serializable data, {exc}") from exc
    out["extra"] = dict(extra)
    return out


@dataclass(kw_only=True)
class RunResult:
    """The results of one run of one method on one dataset split (validated on construction and on output)."""

    system: str
    task: str
    dataset: str
    split: str
    method: str
    backbone: str
    metrics: dict[str, float]
    trainable_params: int
    total_params: int
    package_version: str
    seed: int | None = None
    wall_time_s: float | None = None
    peak_memory_mb: float | None = None
    git_commit: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        normalized = _validate(self._as_mapping(), f"RunResult(method={self.method!r})")
        for name, value in normalized.items():
            setattr(self, name, value)

    def _as_mapping(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def trainable_percent(self) -> float | None:
        """``100 * trainable_params / total_params`` (the project's convention), None when total_params is 0."""
        return 100.0 * self.trainable_params / self.total_params if self.total_params else None

    # -- serialization -------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, ``schema_version`` first (validated again, so later mutation is caught)."""
        data = _validate(self._as_mapping(), f"RunResult(method={self.method!r})")
        return {"schema_version": data.pop("schema_version"), **data}

    def to_json(self, indent: int | None = 2) -> str:
        """The result as JSON text (no trailing newline)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> RunResult:
        """Validate ``data`` (``source`` names it in error messages) and build a result."""
        if not isinstance(data, Mapping):
            raise RunResultError(f"{source}: expected a JSON object at the top level, got {type(data).__name__}")
        return cls(**_validate(data, source))

    @classmethod
    def from_json(cls, text: str, source: str = "<string>") -> RunResult:
        """Parse and validate JSON text."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RunResultError(f"{source}: not valid JSON: {exc}") from exc
        return cls.from_dict(data, source)

    def write(self, path: Path | str) -> Path:
        """Write the result atomically (:func:`peft_core.io.atomic_write_text`: temporary file, then rename)."""
        path = Path(path)
        atomic_write_text(path, self.to_json() + "\n")
        return path

    @classmethod
    def read(cls, path: Path | str) -> RunResult:
        """Read and validate a result file; errors name ``path``."""
        path = Path(path)
        return cls.from_json(path.read_text(encoding="utf-8"), source=str(path))

    # -- display -------------------------------------------------------------------------------------------------

    def table(self, details: Sequence[tuple[str, str]] = ()) -> str:
        """The result as a readable text table: the metrics, the package's ``details`` rows (e.g. how many items
        were evaluated), the parameter counts, wall time and peak memory."""
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"{self.system}: {self.method} on {self.dataset}/{self.split} ({self.backbone})")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for name, value in self.metrics.items():
            table.add_row(name, f"{value:.2f}")
        for name, value in details:
            table.add_row(name, value)
        table.add_row("trainable params", f"{self.trainable_params:,} ({self.trainable_percent or 0:.3f}%)")
        table.add_row("total params", f"{self.total_params:,}")
        if self.wall_time_s is not None:
            table.add_row("wall time", f"{self.wall_time_s:.1f} s")
        if self.peak_memory_mb is not None:
            table.add_row("peak memory", f"{self.peak_memory_mb:.0f} MiB")
        buffer = io.StringIO()
        Console(file=buffer, width=120, color_system=None).print(table)
        return buffer.getvalue()

    # -- environment ---------------------------------------------------------------------------------------------

    @staticmethod
    def collect_environment(package: str = "peft-core", cwd: Path | str | None = None) -> dict[str, str | None]:
        """``{"package_version": ..., "git_commit": ...}`` for ``RunResult(..., **RunResult.collect_environment())``.

        ``package_version`` is the installed version of ``package`` ("unknown" if it is not installed);
        ``git_commit`` is ``git rev-parse HEAD`` run in ``cwd`` (default: this file's directory, i.e. the checkout
        of an editable install), None when that is not a git repository, has no commit, or git is missing.
        """
        try:
            version = metadata.version(package)
        except metadata.PackageNotFoundError:
            version = "unknown"
        return {"package_version": version, "git_commit": git_commit(cwd)}


def git_commit(cwd: Path | str | None = None) -> str | None:
    """The commit checked out in ``cwd`` (default: this file's directory), or None if there is none."""
    directory = Path(cwd) if cwd is not None else Path(__file__).resolve().parent
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = proc.stdout.strip()
    return commit if proc.returncode == 0 and commit else None
