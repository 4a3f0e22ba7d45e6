"""Measure one configuration: trainable parameters, peak memory, median step time.

Run in a fresh process per configuration (see :mod:`peft_core.bench.runner`), or by hand::

    python -m peft_core.bench.measure --config '{"model": "bert-base", "method": "lora", "impl": "peft_core",
                                                 "batch": 2, "seq_len": 16, "target_len": 8}'

prints one line ``BENCH_RESULT {...}`` (JSON).

Sequence, in the measuring process:

1. a tiny forward/backward/AdamW step on a toy layer, so that the code pages of the kernels every step uses are
   resident before the baseline (they would otherwise count as step memory), and a dry run of the configuration
   on the ``meta`` device (imports every module it uses; no memory);
2. **baseline**: garbage collection, ``malloc_trim(0)`` (glibc returns free heap pages to the OS), then the
   resident set size (RSS; on CUDA: ``torch.cuda.memory_allocated``);
3. build the model (random weights), apply the method, make the inputs and the AdamW optimizer (trainable
   parameters only, ``lr`` 1e-4);
4. ``warmup`` training steps (forward, loss, backward, ``optimizer.step()``, ``zero_grad(set_to_none=True)``;
   ``frozen``: a ``torch.no_grad()`` forward in eval mode). The optimizer state is created lazily here;
5. garbage collection + ``malloc_trim(0)`` again, **static** memory = RSS - baseline (weights, method parameters,
   optimizer state, inputs), then the peak counter is reset: on Linux ``echo 5 > /proc/self/clear_refs`` resets the
   kernel's RSS high-water mark ``VmHWM``; on CUDA ``torch.cuda.reset_peak_memory_stats``;
6. ``steps`` measured steps, each timed with ``time.perf_counter`` (``torch.cuda.synchronize`` on CUDA);
7. **peak** memory = ``VmHWM`` - baseline (CUDA: ``max_memory_allocated`` - baseline): everything the training step
   holds at its worst moment, weights and optimizer state included; ``transient`` = peak - static.

Where ``/proc/self/clear_refs`` cannot be written (not Linux), a thread samples the RSS every millisecond
(``memory_method`` = ``rss-sampled``; short peaks may be missed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from torch import nn

from peft_core.bench.configs import BenchConfig, ModelSpec, get_spec
from peft_core.memory import make_probe

RESULT_MARK = "BENCH_RESULT "
MIB = 1024 * 1024


def warm_kernels(device: torch.device) -> None:
    """One forward/backward/AdamW step of a toy layer (pages in the kernels' code before the baseline)."""
    layer = nn.Sequential(nn.Linear(16, 16), nn.LayerNorm(16), nn.GELU()).to(device)
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-3)
    x = torch.randn(2, 4, 16, device=device)
    loss = torch.nn.functional.cross_entropy(layer(x).softmax(-1).reshape(-1, 16), torch.zeros(8, dtype=torch.long,
                                                                                                 device=device))
    loss.backward()
    opt.step()
    del layer, opt, x, loss


# ----------------------------------------------------------------------------------------------------- prepare
def prepare(spec: ModelSpec, cfg: BenchConfig, model: nn.Module) -> Any:
    """Apply ``cfg``'s method to ``model``; return the :class:`~peft_core.bench.workloads.Job` to run."""
    from peft_core.bench import workloads
    from peft_core.bench.workloads import Job

    def loss_of(module: nn.Module) -> Any:
        return lambda batch: workloads.forward_loss(spec, module, batch)

    if cfg.impl == "reference" and cfg.method == "frozen":
        model.requires_grad_(False)
        return Job(model, [], loss_of(model), train=False)
    if cfg.impl == "reference" and cfg.method == "full":
        model.requires_grad_(True)
        return Job(model, [p for p in model.parameters() if p.requires_grad], loss_of(model))
    if cfg.impl == "hf_peft":
        from peft_core.bench import peft_ref

        wrapped = peft_ref.apply(cfg.method, spec, model)
        return Job(wrapped, [p for p in wrapped.parameters() if p.requires_grad], loss_of(wrapped))
    if cfg.impl == "peft_core":
        from peft_core.model import add_adapter, mark_trainable
        from peft_core.registry import make_config

        add_adapter(model, make_config(cfg.method, **cfg.overrides))
        mark_trainable(model)
        return Job(model, [p for p in model.parameters() if p.requires_grad], loss_of(model))
    raise ValueError(f"impl={cfg.impl!r} is not allowed; expected reference, peft_core or hf_peft")


def dry_run(spec: ModelSpec, cfg: BenchConfig) -> None:
    """Build the model, apply the method and run one step on the ``meta`` device (no memory, best effort).

    This imports every module the configuration uses (transformers' and PEFT's lazy imports, the method's code)
    before the baseline, so their memory is not counted as step memory.
    """
    from peft_core.bench import workloads

    meta = torch.device("meta")
    try:
        model = workloads.build_model(spec, vl=cfg.vl, device=meta)
        job = prepare(spec, cfg, model)
        batch = workloads.make_batch(spec, cfg, model, meta)
        with torch.set_grad_enabled(job.train):
            loss = job.loss(batch)
        if job.train and loss.requires_grad:
            loss.backward()
    except Exception as exc:  # some ops have no meta kernel: the imports done so far are what matters
        print(f"dry run on meta stopped early (the imports so far are done): {type(exc).__name__}: {str(exc)[:200]}",
              file=sys.stderr)


# --------------------------------------------------------------------------------------------------------- run
def run_config(cfg: BenchConfig) -> dict[str, Any]:
    """Measure ``cfg`` in this process (call it in a fresh process: the memory baseline assumes one)."""
    from peft_core.bench import workloads
    from peft_core.report import count_parameters

    start = time.perf_counter()
    torch.set_num_threads(max(1, cfg.threads))
    device = torch.device(cfg.device)
    spec = get_spec(cfg.model)
    probe = make_probe(device)
    warm_kernels(device)
    dry_run(spec, cfg)
    baseline = probe.current()

    model = workloads.build_model(spec, vl=cfg.vl, device="cpu", weights=cfg.weights)
    job = prepare(spec, cfg, model)
    job.module.to(device)
    batch = workloads.make_batch(spec, cfg, model, device)
    report = count_parameters(job.module)
    optimizer = torch.optim.AdamW(job.params, lr=cfg.lr) if job.train and job.params else None
    if job.train and optimizer is None:
        raise ValueError(f"{cfg.label}: the method leaves no trainable parameter")
    job.module.train(job.train)

    losses: list[float] = []

    def step() -> None:
        if not job.train:
            with torch.no_grad():
                losses.append(float(job.loss(batch)))
            return
        loss = job.loss(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))

    for _ in range(cfg.warmup):
        step()
    static = probe.current()
    probe.start_window()
    times: list[float] = []
    for _ in range(cfg.steps):
        probe.sync()
        t0 = time.perf_counter()
        step()
        probe.sync()
        times.append(time.perf_counter() - t0)
    peak = max(probe.peak(), static)
    note = "" if all(math.isfinite(x) for x in losses) else "non-finite loss"
    return {
        **cfg.to_dict(),
        "status": "ok",
        "note": note,
        "trainable": report.trainable,
        "total": report.total,
        "base_total": report.base_total,
        "trainable_percent": report.percent,
        "baseline_mb": baseline / MIB,
        "static_mb": (static - baseline) / MIB,
        "peak_mb": (peak - baseline) / MIB,
        "transient_mb": (peak - static) / MIB,
        "step_s": statistics.median(times) if times else None,
        "step_times_s": times,
        "loss": losses[-1] if losses else None,
        "memory_method": probe.method,
        "seconds": time.perf_counter() - start,
    }


def error_row(cfg: BenchConfig, message: str) -> dict[str, Any]:
    """The row of a configuration whose measurement failed."""
    return {**cfg.to_dict(), "status": "error", "note": message}


def run_safely(cfg: BenchConfig) -> dict[str, Any]:
    """:func:`run_config`, turning an exception into an error row (the traceback goes to stderr)."""
    try:
        return run_config(cfg)
    except Exception as exc:  # every failure becomes a row of the table
        traceback.print_exc()
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return error_row(cfg, f"{type(exc).__name__}: {text}"[:300])


def _redirect_output(path: str | None) -> None:
    """Send this process's stdout/stderr (file descriptors 1 and 2) to ``path``."""
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def child_main(config: dict[str, Any], conn: Any) -> None:
    """Entry point of a forked measuring process: measure, send the row through ``conn``."""
    cfg = BenchConfig.from_dict(config)
    _redirect_output(cfg.log)
    print(f"[{platform.node()} pid {os.getpid()}] {cfg.label}", flush=True)
    row = run_safely(cfg)
    print(json.dumps(row), flush=True)
    conn.send(row)
    conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m peft_core.bench.measure", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="BenchConfig as JSON")
    args = parser.parse_args(argv)
    cfg = BenchConfig.from_dict(json.loads(args.config))
    row = run_safely(cfg)
    sys.stdout.flush()
    print(RESULT_MARK + json.dumps(row), flush=True)
    return 0 if row["status"] == "ok" else 1


if __name__ == "__main__":
    raise SystemExit(main())
