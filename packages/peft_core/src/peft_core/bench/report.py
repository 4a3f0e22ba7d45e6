"""Ratios and outputs: ``results.json``, ``results.md`` (Markdown table) and ``memory_vs_trainable.png``.

Ratios (per model, batch and lengths; VL-variant rows against the VL variant's references):

* ``mem_vs_full`` = peak memory / peak memory of full fine-tuning, ``mem_vs_frozen`` = peak memory / peak memory of
  the frozen ``no_grad`` forward (the floor a side-tuning method can reach);
* ``time_vs_full`` / ``time_vs_frozen``: the same with the median step time.

Peak memory includes the weights (see :mod:`peft_core.bench.measure`), as the memory numbers of the UniPT and LST
papers do.
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from peft_core.io import atomic_write, atomic_write_text

IMPL_LABELS = {"reference": "reference", "peft_core": "peft_core", "hf_peft": "HF PEFT"}
RATIO_FIELDS = ("mem_vs_full", "mem_vs_frozen", "time_vs_full", "time_vs_frozen")


def _ref_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["model"], bool(row.get("vl", False)), row.get("batch"), row.get("seq_len"), row.get("target_len"))


def _ratio(a: Any, b: Any) -> float | None:
    if a is None or b is None or not isinstance(a, int | float) or not isinstance(b, int | float) or b <= 0:
        return None
    return float(a) / float(b)


def add_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fill :data:`RATIO_FIELDS` of every measured row from the ``full`` / ``frozen`` rows with the same key."""
    refs: dict[tuple[Any, ...], dict[str, dict[str, Any]]] = {}
    for row in rows:
        if row.get("impl") == "reference" and row.get("status") == "ok":
            refs.setdefault(_ref_key(row), {})[row["method"]] = row
    for row in rows:
        if row.get("status") != "ok":
            continue
        ref = refs.get(_ref_key(row), {})
        full, frozen = ref.get("full"), ref.get("frozen")
        row["mem_vs_full"] = _ratio(row.get("peak_mb"), full and full.get("peak_mb"))
        row["mem_vs_frozen"] = _ratio(row.get("peak_mb"), frozen and frozen.get("peak_mb"))
        row["time_vs_full"] = _ratio(row.get("step_s"), full and full.get("step_s"))
        row["time_vs_frozen"] = _ratio(row.get("step_s"), frozen and frozen.get("step_s"))
    return rows


def order_rows(rows: Iterable[dict[str, Any]], models: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Per model (in ``models`` order): frozen, full, then the methods in run order, each Hugging Face PEFT row right
    after the peft_core row of the same preset, skipped rows last."""
    rows = list(rows)
    model_rank = {m: i for i, m in enumerate(models)}
    first_seen: dict[str, int] = {}
    for i, row in enumerate(rows):
        first_seen.setdefault(row["model"], len(models) + i)
    method_rank: dict[tuple[str, str], int] = {}
    for i, row in enumerate(rows):
        method_rank.setdefault((row["model"], row["method"]), i)

    def key(item: tuple[int, dict[str, Any]]) -> tuple[Any, ...]:
        i, row = item
        model = row["model"]
        status = 0 if row.get("status") in ("ok", "error") else 1
        ref = {"frozen": 0, "full": 1}.get(row["method"], 2) if row.get("impl") == "reference" else 2
        return (model_rank.get(model, first_seen[model]), status, bool(row.get("vl")), ref,
                method_rank[(model, row["method"])], row.get("impl") == "hf_peft", i)

    return [row for _, row in sorted(enumerate(rows), key=key)]


# --------------------------------------------------------------------------------------------------- environment
def environment(device: str = "cpu", threads: int | None = None, isolation: str = "", **extra: Any) -> dict[str, Any]:
    """Versions and hardware of this run."""
    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "device": device,
        "cpu_count": os.cpu_count(),
        "threads_per_config": threads,
        "isolation": isolation,
    }
    for name in ("transformers", "peft", "timm", "peft-core"):
        try:
            env[name.replace("-", "_")] = metadata.version(name)
        except metadata.PackageNotFoundError:
            env[name.replace("-", "_")] = None
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    try:
        from peft_core.results import git_commit

        env["git_commit"] = git_commit()
    except Exception:  # informative only
        env["git_commit"] = None
    env.update(extra)
    return env


def write_json(path: Path, rows: list[dict[str, Any]], env: dict[str, Any]) -> None:
    """``{"environment": {...}, "rows": [...]}`` (every field of every row)."""
    payload = {"environment": env, "rows": rows}
    atomic_write_text(Path(path), json.dumps(payload, indent=2, default=str) + "\n")


# ------------------------------------------------------------------------------------------------------ markdown
def _fmt(value: Any, kind: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if kind == "int":
        return f"{int(value):,}"
    if kind == "pct":
        return f"{value:.3g}%" if value < 100 else "100%"
    if kind == "mb":
        return f"{value:,.0f}"
    if kind == "ms":
        return f"{1000 * value:,.0f}"
    if kind == "x":
        return f"{value:.2f}"
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


COLUMNS = ("model", "method", "impl", "trainable", "trainable %", "peak MiB", "mem / full", "mem / frozen",
           "step ms", "time / full", "time / frozen", "note")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """One line per row; skipped and failed rows keep their reason in the ``note`` column."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * 8 + ["---"]) + "|"]
    for row in rows:
        status = row.get("status", "ok")
        model = row["model"] + (" (VL)" if row.get("vl") else "")
        impl = IMPL_LABELS.get(row.get("impl", ""), row.get("impl", ""))
        if status == "ok":
            cells = [_fmt(row.get("trainable"), "int"), _fmt(row.get("trainable_percent"), "pct"),
                     _fmt(row.get("peak_mb"), "mb"), _fmt(row.get("mem_vs_full"), "x"),
                     _fmt(row.get("mem_vs_frozen"), "x"), _fmt(row.get("step_s"), "ms"),
                     _fmt(row.get("time_vs_full"), "x"), _fmt(row.get("time_vs_frozen"), "x")]
            note = row.get("note", "")
        else:
            cells = ["—"] * 8
            note = f"{status}: {row.get('note', '')}"
        lines.append("| " + " | ".join(_cell(c) for c in [model, row["method"], impl, *cells, note]) + " |")
    return "\n".join(lines)


def markdown_report(rows: list[dict[str, Any]], env: dict[str, Any], settings: dict[str, Any]) -> str:
    """The table with a header saying what was measured and where."""
    device = env.get("gpu") or f"CPU ({env.get('cpu_count')} cores, {env.get('threads_per_config')} threads)"
    methods = sorted({r.get("memory_method") for r in rows if r.get("memory_method")})
    head = [
        "# peft_core benchmark",
        "",
        f"- device: {device}; torch {env.get('torch')}, transformers {env.get('transformers')}, "
        f"peft {env.get('peft')}; isolation: {env.get('isolation')}",
        f"- batch {settings.get('batch')}, text length {settings.get('seq_len')} (+ visual tokens for *-vl36), "
        f"target length {settings.get('target_len')}; {settings.get('warmup')} warmup + {settings.get('steps')} "
        f"measured steps (AdamW); mode: {settings.get('mode')}",
        f"- peak MiB: peak memory of a training step over the process baseline, weights and optimizer state "
        f"included (memory method: {', '.join(methods) or '—'}); step ms: median step time",
        "- mem / full, time / full: ratios to full fine-tuning; mem / frozen, time / frozen: ratios to a "
        "torch.no_grad() forward of the same model",
    ]
    if settings.get("wall_s") is not None:
        head.append(f"- wall time of the run: {settings['wall_s']:.0f} s")
    return "\n".join([*head, "", markdown_table(rows), ""])


# ---------------------------------------------------------------------------------------------------------- plot
def plot_memory_vs_trainable(rows: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Two panels against trainable % (log x): peak memory / full fine-tuning, and peak memory / frozen forward (log
    y). One colour per model; peft_core dots, Hugging Face PEFT crosses, full fine-tuning triangles; the frozen
    forward is a dashed line per model (the floor)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.get("status") == "ok" and r.get("mem_vs_full") is not None]
    models = list(dict.fromkeys(_model_label(r) for r in ok))
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(models)}
    markers = {"peft_core": "o", "hf_peft": "x", "reference": "^"}
    fig, axes = plt.subplots(1, 2, figsize=(15, 6.5))
    panels = (("mem_vs_full", "peak training memory / full fine-tuning", False),
              ("mem_vs_frozen", "peak training memory / frozen no-grad forward", True))
    for ax, (key, ylabel, log_y) in zip(axes, panels):
        for row in ok:
            model, value = _model_label(row), row.get(key)
            if value is None:
                continue
            if row.get("method") == "frozen" and row.get("impl") == "reference":
                ax.axhline(value, color=colors[model], linestyle="--", linewidth=1, label=f"{model}: frozen forward")
                continue
            pct = max(float(row.get("trainable_percent") or 0.0), 1e-4)
            impl = row.get("impl", "peft_core")
            ax.scatter(pct, value, color=colors[model], marker=markers.get(impl, "o"), s=30,
                       label=f"{model}: {IMPL_LABELS.get(impl, impl)}")
            name = row["method"] + (" (PEFT)" if impl == "hf_peft" else "")
            ax.annotate(name, (pct, value), textcoords="offset points", xytext=(3, 2), fontsize=6, alpha=0.8)
        ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel("trainable parameters (% of all parameters, log scale)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    if unique:
        fig.legend(unique.values(), unique.keys(), fontsize=7, loc="lower center", ncol=min(4, len(unique)))
    fig.suptitle(title or "Peak training memory vs trainable parameters")
    fig.tight_layout(rect=(0, 0.06 + 0.025 * ((len(unique) - 1) // 4), 1, 1))
    atomic_write(Path(path), lambda p: fig.savefig(p, dpi=150, format="png"))
    plt.close(fig)


def _model_label(row: dict[str, Any]) -> str:
    return row["model"] + (" (VL)" if row.get("vl") else "")
