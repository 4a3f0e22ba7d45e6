"""``python -m peft_core.bench``: trainable parameters, peak training memory and step time of every method preset on
real-size architectures (random weights), as ratios to full fine-tuning and to a frozen no-grad forward, next to
Hugging Face PEFT's implementation of the same method.

    python -m peft_core.bench --quick                       # BART-base, BERT-base, T5-base (LST), < 10 min
    python -m peft_core.bench                               # 4 models x every registered preset (hours on CPU)
    python -m peft_core.bench --models bert-base --methods full frozen lora 'peft:lora'
    python -m peft_core.bench --device cuda                 # peaks from torch.cuda.max_memory_allocated
    python -m peft_core.bench --list                        # models, and what --methods would select

Outputs in ``--out`` (default ``bench/out``): ``results.json``, ``results.md``, ``memory_vs_trainable.png``,
``bench.log`` and ``logs/`` (one log per configuration). See ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peft_core.bench import configs as C
from peft_core.bench import report
from peft_core.bench.runner import Isolation, WeightCache, preload_modules
from peft_core.io import atomic_write_text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m peft_core.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help=f"models {', '.join(C.QUICK_SELECTION)} with a method subset each (see --list); batch "
                        f"{C.QUICK_SHAPE.batch}, text {C.QUICK_SHAPE.seq_len}; 1 warmup + 3 steps")
    p.add_argument("--models", nargs="+", help=f"benchmark models (default: {', '.join(C.FULL_MODELS)}; 'all')")
    p.add_argument("--methods", nargs="+",
                   help="full, frozen, preset names or glob patterns ('lst*', '*'), 'peft:NAME' for Hugging Face "
                        "PEFT's implementation of preset NAME")
    p.add_argument("--batch", type=int, help="batch size")
    p.add_argument("--seq-len", type=int, help="text length (seq2seq: before the visual tokens)")
    p.add_argument("--target-len", type=int, help="seq2seq label length")
    p.add_argument("--warmup", type=int, help="unmeasured steps first (default 2; quick 1)")
    p.add_argument("--steps", type=int, help="measured steps (default 5; quick 3)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--threads", type=int, default=C.default_threads(), help="torch threads per configuration")
    p.add_argument("--isolation", choices=("forkserver", "subprocess"),
                   help="how each configuration gets a fresh process (default: forkserver on CPU, subprocess on "
                        "CUDA; see peft_core.bench.runner)")
    p.add_argument("--timeout", type=float, help="seconds per configuration (default 1800; quick 300)")
    p.add_argument("--no-cache", action="store_true", help="every process builds its model (slower)")
    p.add_argument("--out", type=Path, default=Path("bench/out"), help="output folder (default bench/out)")
    p.add_argument("--list", action="store_true", help="print the models and the selected methods, run nothing")
    return p


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


class Logger:
    """Lines to ``bench.log`` and to the console (through tqdm, so the progress bar stays intact)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.echo: Callable[[str], None] = print

    def __call__(self, message: str, console: bool = True) -> None:
        stamp = time.strftime("%H:%M:%S")
        self.fh.write(f"{stamp} {message}\n")
        self.fh.flush()
        if console:
            self.echo(message)

    def close(self) -> None:
        self.fh.close()


def _summary(row: dict[str, Any]) -> str:
    if row.get("status") != "ok":
        return f"{row.get('status')}: {row.get('note')}"
    return (f"trainable {row['trainable']:,} ({row['trainable_percent']:.3g}%), peak {row['peak_mb']:,.0f} MiB, "
            f"step {1000 * row['step_s']:,.0f} ms, {row['seconds']:.0f} s")


def list_selection(specs: list[C.ModelSpec], patterns: list[str] | dict[str, tuple[str, ...]]) -> None:
    print("models (* = selected):")
    for name, spec in C.MODELS.items():
        mark = "*" if spec in specs else " "
        print(f" {mark} {name:20s} {spec.description}")
    for spec in specs:
        selected = patterns.get(spec.name, C.QUICK_METHODS) if isinstance(patterns, dict) else patterns
        own, peft, unmatched = C.resolve_methods(selected)
        print(f"\n{spec.name}: methods {', '.join(own)}")
        print("  Hugging Face PEFT counterparts: " + (", ".join(peft) or "-"))
        if unmatched:
            print("  patterns matching nothing registered: " + ", ".join(unmatched))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quick = args.quick
    base = C.QUICK_SHAPE if quick else C.FULL_SHAPE
    shape = C.Shape(args.batch or base.batch, args.seq_len or base.seq_len, args.target_len or base.target_len)
    warmup = args.warmup if args.warmup is not None else (1 if quick else 2)
    steps = args.steps if args.steps is not None else (3 if quick else 5)
    timeout = args.timeout or (300.0 if quick else 1800.0)
    try:
        specs = C.select_models(args.models, quick)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    patterns: list[str] | dict[str, tuple[str, ...]] = (
        list(args.methods) if args.methods else dict(C.QUICK_SELECTION) if quick else list(C.FULL_METHODS))
    if args.list:
        list_selection(specs, patterns)
        return 0
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("error: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
            return 2

    start = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    log = Logger(out / "bench.log")
    every = [p for group in patterns.values() for p in group] if isinstance(patterns, dict) else patterns
    with_peft = any(p.startswith(C.PEFT_PREFIX) for p in every)
    mode = args.isolation or ("subprocess" if args.device.startswith("cuda") else "forkserver")
    isolation = Isolation(mode, preload_modules(specs, peft=with_peft))
    isolation.start()  # the fork server imports while this process plans
    log(f"peft_core bench ({'quick' if quick else 'full'}): models {[s.name for s in specs]}, "
        f"batch {shape.batch}, seq {shape.seq_len}, target {shape.target_len}, warmup {warmup}, steps {steps}, "
        f"device {args.device}, {args.threads} threads, isolation {isolation.mode}")
    configs, skips = C.plan(specs, patterns, shape, warmup=warmup, steps=steps, device=args.device,
                            threads=args.threads)
    rows: list[dict[str, Any]] = [s.to_row() for s in skips]
    for skip in skips:
        log(f"skip {skip.model} / {skip.method} [{skip.impl}]: {skip.reason}", console=False)
    log(f"{len(configs)} configurations to measure, {len(skips)} skipped (reasons in the table)")

    from tqdm.auto import tqdm

    cache = WeightCache(enabled=not args.no_cache)
    bar = tqdm(total=len(configs), desc="bench", unit="cfg", file=sys.stdout)
    log.echo = lambda m: tqdm.write(m, file=sys.stdout)
    try:
        for spec in specs:
            group = [c for c in configs if c.model == spec.name]
            for cfg in group:
                index = configs.index(cfg)
                bar.set_postfix_str(f"{cfg.model} / {cfg.method}" + (" [PEFT]" if cfg.impl == "hf_peft" else ""))
                cfg.weights = cache.path(spec, cfg.vl, log=lambda m: log(m, console=False))
                cfg.log = str(out / "logs" / f"{index:03d}-{_slug(cfg.model)}-{_slug(cfg.method)}-{cfg.impl}.log")
                Path(cfg.log).unlink(missing_ok=True)
                row = isolation.run(cfg, timeout)
                rows.append(row)
                log(f"{cfg.label}: {_summary(row)}")
                bar.update(1)
            cache.drop(spec)
    finally:
        bar.close()
        cache.close()

    rows = report.order_rows(report.add_ratios(rows), [s.name for s in specs])
    wall = time.perf_counter() - start
    env = report.environment(args.device, args.threads, isolation.mode)
    settings = {"mode": "quick" if quick else "full", "batch": shape.batch, "seq_len": shape.seq_len,
                "target_len": shape.target_len, "warmup": warmup, "steps": steps, "wall_s": wall,
                "models": [s.name for s in specs], "methods": patterns}
    env["settings"] = settings
    report.write_json(out / "results.json", rows, env)
    text = report.markdown_report(rows, env, settings)
    atomic_write_text(out / "results.md", text)
    try:
        report.plot_memory_vs_trainable(rows, out / "memory_vs_trainable.png",
                                        f"peak memory vs trainable % (batch {shape.batch}, {args.device})")
    except ImportError as exc:
        log(f"no plot: {exc} (install matplotlib, the bench extra)")
    log.echo = print
    print("\n" + text)
    log(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'memory_vs_trainable.png'} "
        f"in {wall:.0f} s")
    log.close()
    return 0 if any(r.get("status") == "ok" for r in rows) or not configs else 1
