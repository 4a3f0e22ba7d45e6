"""Sessions of the vlpetl monorepo (uv backend: every session gets its own venv, hard-linked from uv's cache).

    nox -t ci                      lint + every package's tests + integration (what CI runs)
    nox -s tests-peft_core         one package's tests, in a venv holding only that package and its test extra
    nox -s demo                    the README demo (peft_core: every method on a tiny BART)
    nox -t demos                   every package's demo, one after the other
    nox -s bench -- --quick        the benchmark suite (not part of the tests)
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv"
nox.options.error_on_missing_interpreters = False

ROOT = Path(__file__).parent
PACKAGES = sorted(p.name for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").is_file())
PYTHON = "3.11"
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def dist_name(package: str) -> str:
    data = tomllib.loads((ROOT / "packages" / package / "pyproject.toml").read_text())
    return data["project"]["name"]


def sync(session: nox.Session, package: str, *extras: str) -> None:
    """Install ``package`` (and only what it depends on) from the lock file into the session's venv."""
    args = ["uv", "sync", "--frozen", "--no-default-groups", "--package", dist_name(package)]
    args += [f"--extra={e}" for e in extras]
    session.run_install(*args, env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location})


def _make_tests(package: str) -> None:
    @nox.session(name=f"tests-{package}", python=PYTHON, tags=["tests", "ci"])
    def tests(session: nox.Session) -> None:
        sync(session, package, "test")
        workers = os.environ.get("PYTEST_WORKERS", str(min(2, os.cpu_count() or 1)))
        session.run("pytest", f"packages/{package}/tests", "-n", workers, "--dist", "loadfile", "-q",
                    *session.posargs, env=THREADS)


for _package in PACKAGES:
    _make_tests(_package)


@nox.session(python=PYTHON, tags=["ci"])
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.8")
    session.run("ruff", "check", ".")


@nox.session(python=PYTHON, tags=["ci"])
def integration(session: nox.Session) -> None:
    """Each package installed alone into a fresh venv; its command line runs."""
    session.install("pytest>=8", "uv>=0.5")
    session.run("pytest", "integration_tests", "-q", *session.posargs, env=THREADS)


@nox.session(python=PYTHON, tags=["demos"])
def demo(session: nox.Session) -> None:
    """Every method on a tiny BART trained on a synthetic sequence-to-sequence task (a few minutes on 2 CPUs)."""
    sync(session, "peft_core", "models")
    session.run("python", "-m", "peft_core.demo", *session.posargs, env=THREADS)


@nox.session(name="demo-video_swin_vpetl", python=PYTHON, tags=["demos"])
def demo_video(session: nox.Session) -> None:
    """Video Swin + PATT vs full fine-tuning on synthetic moving-shape videos (a few minutes on 2 CPUs)."""
    sync(session, "video_swin_vpetl")
    session.run("video-swin-vpetl", "demo", *session.posargs, env=THREADS)


@nox.session(name="demo-vse_infty", python=PYTHON, tags=["demos"])
def demo_vse(session: nox.Session) -> None:
    """Image-text retrieval: UniPT vs full fine-tuning on frozen real MiniLM-L6 + EfficientNet-Lite0 (minutes)."""
    sync(session, "vse_infty", "demo")
    session.run("vse-infty", "demo", *session.posargs, env=THREADS)


@nox.session(name="demo-vl_adapter_vlpet", python=PYTHON, tags=["demos"])
def demo_vl(session: nox.Session) -> None:
    """Tiny VL-BART multitask (VQA, GQA, NLVR2, captioning): VL-PET-large, VL-Adapter, LoRA, full fine-tuning."""
    sync(session, "vl_adapter_vlpet")
    session.run("vl-pet", "demo", *session.posargs, env=THREADS)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Trainable parameters, peak memory and step time as ratios (nox -s bench -- --quick)."""
    sync(session, "peft_core", "models", "bench")
    session.run("python", "-m", "peft_core.bench", *session.posargs, env={"HF_HUB_OFFLINE": "1"})
