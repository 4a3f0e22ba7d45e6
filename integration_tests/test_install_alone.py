"""Each package, built as a wheel, installs alone into a fresh venv with only its declared dependencies (pinned by
the workspace lock) and its command line runs. This catches a missing dependency, a missing data file in the wheel
and a broken entry point - things an editable workspace install hides."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(p.name for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").is_file())
UV = shutil.which("uv") or pytest.fail("uv must be on PATH for the integration tests (pip install uv)")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def pyproject(package: str) -> dict:
    return tomllib.loads((ROOT / "packages" / package / "pyproject.toml").read_text())


def workspace_deps(package: str) -> list[str]:
    """The package and the workspace members it depends on, dependencies first."""
    by_dist = {pyproject(p)["project"]["name"]: p for p in PACKAGES}
    order: list[str] = []

    def visit(pkg: str) -> None:
        for req in pyproject(pkg)["project"].get("dependencies", []):
            name = req.split(">")[0].split("=")[0].split("<")[0].split("[")[0].split(";")[0].strip()
            if name in by_dist and by_dist[name] not in order:
                visit(by_dist[name])
        if pkg not in order:
            order.append(pkg)

    visit(package)
    return order


def run(*args: str | Path, cwd: Path = ROOT, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, args))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module", params=PACKAGES)
def installed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    package = request.param
    tmp = tmp_path_factory.mktemp(package)
    dist = pyproject(package)["project"]["name"]
    extras = ["--extra=models"] if package == "peft_core" else []
    requirements = tmp / "requirements.txt"
    run(UV, "export", "--frozen", "--package", dist, *extras, "--no-hashes", "--no-emit-workspace",
        "--no-default-groups", "-o", requirements)
    wheels = tmp / "wheels"
    for member in workspace_deps(package):
        run(UV, "build", "--wheel", "--quiet", "-o", wheels, ROOT / "packages" / member)
    venv = tmp / "venv"
    run(UV, "venv", "--quiet", "--python", f"{sys.version_info.major}.{sys.version_info.minor}", venv)
    python = venv / "bin" / "python"
    run(UV, "pip", "install", "--quiet", "--python", python, "-r", requirements)
    run(UV, "pip", "install", "--quiet", "--no-deps", "--python", python, *sorted(wheels.glob("*.whl")))
    return package, venv


def test_console_scripts_run(installed: tuple[str, Path], tmp_path: Path) -> None:
    package, venv = installed
    scripts = pyproject(package)["project"].get("scripts", {})
    assert scripts, f"{package} declares no console script"
    for script in scripts:
        out = run(venv / "bin" / script, "--help", cwd=tmp_path)
        assert "usage" in out.stdout.lower()


def test_peft_core_params_and_compare_from_the_wheel(installed: tuple[str, Path], tmp_path: Path) -> None:
    package, venv = installed
    if package != "peft_core":
        return
    python = venv / "bin" / "python"
    out = run(python, "-m", "peft_core", "params", "--model", "bart-base", "--method", "lora", "--r", "128",
              "--json", cwd=tmp_path)
    assert json.loads(out.stdout)["trainable"] == 7_077_888
    result = {
        "schema_version": 1, "system": "vl_pet", "task": "vqa", "dataset": "vqa", "split": "karpathy_test",
        "method": "vl-pet-large", "backbone": "bart-base", "metrics": {"vqa_score": 66.0},
        "trainable_params": 6_050_000, "total_params": 145_400_000, "seed": 0, "wall_time_s": 1.0,
        "peak_memory_mb": None, "package_version": "0.1.0", "git_commit": None, "extra": {},
    }
    (tmp_path / "r.json").write_text(json.dumps(result))
    out = run(python, "-m", "peft_core", "compare", tmp_path / "r.json", "--markdown", cwd=tmp_path)
    assert "paper Table 2" in out.stdout  # the baseline tables ship inside the wheel
