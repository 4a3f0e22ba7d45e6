"""Run configurations, each in a fresh process, and collect their rows.

Isolation (``--isolation``):

* ``forkserver`` (default): :mod:`multiprocessing`'s fork server. One server process imports torch, transformers,
  peft_core (and peft, timm when needed) once and never computes anything; every configuration runs in a new
  process forked from it. Each measurement therefore starts from an idle interpreter (no model, no tensors, no
  allocator history), without paying the imports (tens of seconds on a busy 2-core machine) per configuration.
* ``subprocess``: ``python -m peft_core.bench.measure --config JSON`` per configuration (slower: every process
  imports everything). The default with ``--device cuda``: a CUDA context cannot be created in a process forked
  from one in which a library may already have initialised the driver.

Weight cache: a real-size model is built once per benchmark run in the parent (random weights, the library's
normal initialisation) and saved with ``torch.save``; the measuring processes construct it without running the
weight initialisers and load those weights (seconds instead of tens of seconds each). The files are deleted at
the end.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from peft_core.bench.configs import BenchConfig, ModelSpec
from peft_core.bench.measure import RESULT_MARK, error_row

TRANSFORMERS_MODULES = {
    "bart": "transformers.models.bart.modeling_bart",
    "t5": "transformers.models.t5.modeling_t5",
    "bert": "transformers.models.bert.modeling_bert",
    "clip": "transformers.models.clip.modeling_clip",
    "vit": "transformers.models.vit.modeling_vit",
}


def preload_modules(specs: Iterable[ModelSpec], peft: bool = True) -> list[str]:
    """Modules the fork server imports once: torch, peft_core, and what the selected models and methods need."""
    mods = ["torch", "torch._dynamo", "peft_core", "peft_core.tuners", "peft_core.report", "peft_core.bench.measure",
            "peft_core.bench.workloads"]
    for spec in specs:
        kind = spec.builder.split(":")[0]
        if kind in ("zoo", "vl") or (kind == "tiny" and spec.family != "torch"):
            mods += ["transformers", "peft_core.zoo", "peft_core.zoo_vl", "peft_core.testing"]
            if spec.family in TRANSFORMERS_MODULES:
                mods.append(TRANSFORMERS_MODULES[spec.family])
        if "timm" in spec.description:
            mods.append("timm")
    if peft:
        mods += ["peft", "peft_core.bench.peft_ref"]
    return list(dict.fromkeys(mods))


class Isolation:
    """Runs one configuration per fresh process (see the module docstring) and returns its row."""

    def __init__(self, mode: str = "forkserver", preload: list[str] | None = None) -> None:
        if mode not in ("forkserver", "subprocess"):
            raise ValueError(f"isolation={mode!r} is not allowed; expected 'forkserver' or 'subprocess'")
        if mode == "forkserver" and "forkserver" not in multiprocessing.get_all_start_methods():
            mode = "subprocess"
        self.mode = mode
        self.ctx: Any = None
        if mode == "forkserver":
            self.ctx = multiprocessing.get_context("forkserver")
            self.ctx.set_forkserver_preload(preload or ["torch"])

    def start(self) -> None:
        """Start the fork server now (it imports in the background while the parent prepares)."""
        if self.mode == "forkserver":
            from multiprocessing import forkserver

            forkserver.ensure_running()

    def run(self, cfg: BenchConfig, timeout: float) -> dict[str, Any]:
        if self.mode == "subprocess":
            return self._run_subprocess(cfg, timeout)
        return self._run_forked(cfg, timeout)

    def _run_forked(self, cfg: BenchConfig, timeout: float) -> dict[str, Any]:
        from peft_core.bench.measure import child_main

        receiver, sender = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(target=child_main, args=(cfg.to_dict(), sender), daemon=True)
        proc.start()
        sender.close()
        try:
            if receiver.poll(timeout):
                try:
                    row = receiver.recv()
                except EOFError:
                    row = None
            else:
                proc.kill()
                proc.join(10)
                return error_row(cfg, f"timeout: no result after {timeout:.0f} s")
        finally:
            receiver.close()
        proc.join(60)
        if proc.is_alive():  # pragma: no cover - a child that sent its row but does not exit
            proc.kill()
            proc.join(10)
        if row is None:
            return error_row(cfg, f"the measuring process died (exit code {proc.exitcode}; killed for memory?)")
        return row

    def _run_subprocess(self, cfg: BenchConfig, timeout: float) -> dict[str, Any]:
        cmd = [sys.executable, "-m", "peft_core.bench.measure", "--config", json.dumps(cfg.to_dict())]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return error_row(cfg, f"timeout: no result after {timeout:.0f} s")
        if cfg.log:
            Path(cfg.log).parent.mkdir(parents=True, exist_ok=True)
            with open(cfg.log, "a", encoding="utf-8") as fh:
                fh.write(proc.stdout + proc.stderr)
        for line in reversed(proc.stdout.splitlines()):
            if line.startswith(RESULT_MARK):
                return json.loads(line[len(RESULT_MARK):])
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return error_row(cfg, f"the measuring process exited with {proc.returncode}: {tail}"[:300])


class WeightCache:
    """Random weights built once per model in the parent, saved for the measuring processes (see module doc)."""

    def __init__(self, enabled: bool = True, folder: Path | None = None) -> None:
        self.enabled = enabled
        self.folder = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="peft_core_bench_"))
        self._owned = folder is None
        self._paths: dict[tuple[str, bool], Path] = {}

    def path(self, spec: ModelSpec, vl: bool, log: Callable[[str], None] = print) -> str | None:
        """The saved weights of ``spec`` (built and saved on first use), ``None`` when caching is off."""
        if not self.enabled or not spec.cache:
            return None
        key = (spec.name, vl)
        if key not in self._paths:
            import torch

            from peft_core.bench.workloads import build_model

            t0 = time.perf_counter()
            model = build_model(spec, vl=vl, device="cpu")
            path = self.folder / f"{spec.name}{'-vl' if vl else ''}.pt"
            torch.save(model.state_dict(), path)
            del model
            self._paths[key] = path
            log(f"built {spec.name}{' (VL)' if vl else ''} weights in {time.perf_counter() - t0:.1f} s -> {path}")
        return str(self._paths[key])

    def drop(self, spec: ModelSpec) -> None:
        """Delete ``spec``'s files (every configuration of the model has run)."""
        for key in [k for k in self._paths if k[0] == spec.name]:
            self._paths.pop(key).unlink(missing_ok=True)

    def close(self) -> None:
        for path in self._paths.values():
            path.unlink(missing_ok=True)
        self._paths.clear()
        if self._owned:
            shutil.rmtree(self.folder, ignore_errors=True)
