"""RunResult: JSON round trip, atomic write, validation errors naming the file and field, environment capture."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from peft_core import results
from peft_core.results import RUN_RESULT_JSON_SCHEMA, RunResult, RunResultError


def _fields(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "system": "vl_pet",
        "task": "vqa",
        "dataset": "vqa",
        "split": "karpathy_test",
        "method": "vl-pet-large",
        "backbone": "bart-base",
        "metrics": {"vqa_score": 66.5},
        "trainable_params": 6_050_000,
        "total_params": 145_400_000,
        "package_version": "0.1.0",
        "seed": 42,
        "wall_time_s": 3600.5,
        "peak_memory_mb": 20480.0,
        "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "extra": {"lr": 1e-3, "epochs": 20, "notes": ["last checkpoint"]},
    }
    data.update(overrides)
    return data


def test_json_round_trip_through_a_file(tmp_path: Path) -> None:
    result = RunResult(**_fields())
    path = result.write(tmp_path / "runs" / "result.json")
    assert RunResult.read(path) == result
    text = path.read_text()
    assert text.endswith("}\n")
    data = json.loads(text)
    assert next(iter(data)) == "schema_version" and data["schema_version"] == results.SCHEMA_VERSION
    assert data["metrics"] == {"vqa_score": 66.5} and data["extra"]["notes"] == ["last checkpoint"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["result.json"]  # no temporary file left behind
    assert RunResult.from_json(result.to_json(indent=None)) == result
    assert result.trainable_percent == pytest.approx(100 * 6_050_000 / 145_400_000)


def test_optional_fields_default_and_ints_normalize() -> None:
    result = RunResult(**{k: v for k, v in _fields(metrics={"acc": 70}).items() if k not in {"seed", "extra"}})
    assert result.seed is None and result.extra == {} and result.metrics == {"acc": 70.0}
    assert isinstance(result.metrics["acc"], float)
    assert RunResult(**_fields(total_params=0, trainable_params=0)).trainable_percent is None


def test_write_is_atomic_and_keeps_the_old_file_on_failure(tmp_path: Path) -> None:
    path = RunResult(**_fields()).write(tmp_path / "r.json")
    before = path.read_text()
    broken = RunResult(**_fields())
    broken.metrics["vqa_score"] = "high"  # type: ignore[assignment]  # mutation after construction
    with pytest.raises(RunResultError, match=r"field 'metrics.vqa_score': expected a finite number"):
        broken.write(path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


BAD = {
    "missing field": (lambda d: d.pop("backbone"), "field 'backbone': expected a non-empty string, missing"),
    "metric not a number": (
        lambda d: d["metrics"].update(vqa_score="66.5"),
        "field 'metrics.vqa_score': expected a finite number, got '66.5' (str)",
    ),
    "metric NaN": (lambda d: d["metrics"].update(vqa_score=float("nan")), "field 'metrics.vqa_score'"),
    "params not int": (lambda d: d.update(trainable_params=1.5), "field 'trainable_params': expected a non-negative"),
    "bool seed": (lambda d: d.update(seed=True), "field 'seed': expected an integer or null"),
    "trainable above total": (lambda d: d.update(trainable_params=10**9), "expected at most total_params"),
    "unknown field": (lambda d: d.update(accuracy=1.0), "field 'accuracy': unknown field"),
    "newer schema": (lambda d: d.update(schema_version=99), "field 'schema_version': expected at most 1"),
    "missing schema": (lambda d: d.pop("schema_version"), "field 'schema_version'"),
    "negative time": (lambda d: d.update(wall_time_s=-1), "field 'wall_time_s'"),
    "extra not object": (lambda d: d.update(extra=[1]), "field 'extra': expected an object"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_read_errors_name_file_and_field(tmp_path: Path, case: str) -> None:
    mutate, expected = BAD[case]
    data = {"schema_version": 1, **_fields()}
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(RunResultError) as info:
        RunResult.read(path)
    assert str(info.value).startswith(f"{path}: ")
    assert expected in str(info.value)


def test_read_rejects_invalid_json_and_non_objects(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text("{not json")
    with pytest.raises(RunResultError, match=rf"^{path}: not valid JSON"):
        RunResult.read(path)
    path.write_text("[1, 2]")
    with pytest.raises(RunResultError, match="expected a JSON object at the top level, got list"):
        RunResult.read(path)


def test_construction_validates() -> None:
    with pytest.raises(RunResultError, match=r"RunResult\(method='vl-pet-large'\): field 'total_params'"):
        RunResult(**_fields(total_params=-1))


def test_json_schema_documents_every_field() -> None:
    fields = {f.name: f for f in dataclasses.fields(RunResult)}
    assert set(RUN_RESULT_JSON_SCHEMA["properties"]) == set(fields)
    required = {
        n for n, f in fields.items() if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    assert set(RUN_RESULT_JSON_SCHEMA["required"]) == required | {"schema_version"}


def test_collect_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = RunResult.collect_environment("peft-core", cwd=tmp_path)
    assert env == {"package_version": metadata.version("peft-core"), "git_commit": None}  # tmp_path: no repository
    assert RunResult.collect_environment("no-such-package-xyz", cwd=tmp_path)["package_version"] == "unknown"

    calls: list[list[str]] = []

    def fake_run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout="abc123\n", stderr="")

    monkeypatch.setattr(results.subprocess, "run", fake_run)
    assert results.git_commit(tmp_path) == "abc123" and calls == [["git", "rev-parse", "HEAD"]]
    monkeypatch.setattr(
        results.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 128, "HEAD\n", "fatal")
    )
    assert results.git_commit(tmp_path) is None  # a repository without commits

    def no_git(cmd: list[str], **kwargs: Any) -> None:
        raise FileNotFoundError("git")

    monkeypatch.setattr(results.subprocess, "run", no_git)
    assert results.git_commit(tmp_path) is None
    assert RunResult(**_fields(**RunResult.collect_environment(cwd=tmp_path))).git_commit is None
