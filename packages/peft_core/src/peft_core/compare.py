"""Compare run results with the upstream baseline tables: matching, text/Markdown tables and a plot.

A run is compared with the baseline rows of the same ``system`` whose ``backbone``, ``dataset`` and ``split`` match
(see :meth:`BaselineRow.matches`); a run with no such row is FLAGGED and not compared. Deltas are
``run - upstream``. Besides the run's own metrics, ``trainable_params``, ``trainable_params_m`` and
``params_percent`` are derived from the run's ``trainable_params`` / ``total_params`` fields, so parameter-count
tables (V-PETL, UniPT, VL-PET's Params % column) compare without extra work.

CLI: ``python -m peft_core compare RESULT.json [...] [--markdown] [--plot OUT.png] [--baselines DIR] [--strict]``
(entry point :func:`compare_main`).
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft_core.baselines import WILDCARD, BaselineError, BaselineRow, load_baselines, normalize_name
from peft_core.results import RunResult, RunResultError

__all__ = [
    "DERIVED_METRICS",
    "ComparisonReport",
    "RowComparison",
    "RunComparison",
    "compare_main",
    "compare_runs",
    "plot_report",
    "render_markdown",
    "render_text",
]

DERIVED_METRICS: dict[str, Callable[[RunResult], float]] = {
    "trainable_params": lambda r: float(r.trainable_params),
    "trainable_params_m": lambda r: r.trainable_params / 1e6,
    "params_percent": lambda r: r.trainable_percent,
}
"""Metrics computed from a run's fields when its ``metrics`` does not give them."""

FLAG = "FLAGGED"
_DASH = "—"


# ---------------------------------------------------------------------------------------------------------------------
# comparison


@dataclass(frozen=True)
class RowComparison:
    """One upstream row next to a run: its value and the delta ``run - upstream`` per compared metric."""

    row: BaselineRow
    values: dict[str, float | None]
    deltas: dict[str, float | None]
    same_method: bool


@dataclass(frozen=True)
class RunComparison:
    """A run and the upstream rows it matches (empty, with ``flag`` set, when nothing matches)."""

    result: RunResult
    label: str
    metrics: tuple[str, ...]
    run_values: dict[str, float | None]
    rows: tuple[RowComparison, ...]
    flag: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def compared(self) -> bool:
        """True when at least one upstream row matched and shares a metric with the run."""
        return self.flag is None


@dataclass(frozen=True)
class ComparisonReport:
    """The comparisons of several runs, in input order."""

    runs: tuple[RunComparison, ...]

    @property
    def flagged(self) -> list[RunComparison]:
        """Runs that could not be compared."""
        return [run for run in self.runs if not run.compared]


def _run_value(result: RunResult, metric: str) -> float | None:
    if metric in result.metrics:
        return result.metrics[metric]
    derive = DERIVED_METRICS.get(metric)
    return derive(result) if derive else None


def _compare_one(result: RunResult, label: str, rows: Sequence[BaselineRow], same_method_only: bool) -> RunComparison:
    system_rows = [row for row in rows if row.system == result.system]
    where = f"dataset={result.dataset} split={result.split} backbone={result.backbone}"
    if not system_rows:
        systems = ", ".join(sorted({row.system for row in rows})) or "none"
        flag = f"{FLAG}: no upstream rows for system={result.system} (systems with rows: {systems})"
        return RunComparison(result, label, (), {}, (), flag)
    matched = [
        r for r in system_rows if r.matches(dataset=result.dataset, split=result.split, backbone=result.backbone)
    ]
    if not matched:
        available = sorted({f"{r.dataset}/{r.split}/{r.backbone}" for r in system_rows})
        flag = f"{FLAG}: no upstream row for {where} (available: {', '.join(available)})"
        return RunComparison(result, label, (), {}, (), flag)
    # Dataset-independent rows (dataset "*": parameter counts) are left out when dataset-specific rows with task
    # metrics match (their table is the comparison). When none matches, the run is flagged and only the
    # dataset-independent rows are compared: task metrics are never set beside another dataset's numbers.
    task_rows = [r for r in system_rows if r.dataset != WILDCARD]
    task_matched = [r for r in matched if r.dataset != WILDCARD]
    if any(m not in DERIVED_METRICS for r in task_matched for m in r.metrics):
        matched = task_matched
    task_flag = None
    if task_rows and not task_matched:
        available = sorted({f"{r.dataset}/{r.split}/{r.backbone}" for r in task_rows})
        task_flag = (
            f"{FLAG}: no upstream row for {where} (available: {', '.join(available)}); only dataset-independent "
            "rows (parameter counts) are compared"
        )
    if same_method_only:
        same = [r for r in matched if normalize_name(r.method) == normalize_name(result.method)]
        if not same:
            methods = ", ".join(dict.fromkeys(r.method for r in matched))
            flag = f"{FLAG}: no upstream row for method={result.method} with {where} (methods there: {methods})"
            return RunComparison(result, label, (), {}, (), flag)
        matched = same

    metrics: list[str] = []
    for row in matched:
        metrics.extend(m for m in row.metrics if m not in metrics)
    run_values = {m: _run_value(result, m) for m in metrics}
    comparisons = []
    for row in matched:
        values = {m: row.metrics.get(m) for m in metrics}
        deltas = {
            m: None if values[m] is None or run_values[m] is None else run_values[m] - values[m] for m in metrics
        }
        is_same = normalize_name(row.method) == normalize_name(result.method)
        comparisons.append(RowComparison(row, values, deltas, is_same))

    notes = []
    extra = [m for m in result.metrics if m not in metrics]
    if extra:
        notes.append(f"run metrics without an upstream value here: {', '.join(extra)}")
    flag = None
    if all(v is None for v in run_values.values()):
        flag = (
            f"{FLAG}: no metric in common with the upstream rows for {where} "
            f"(upstream: {', '.join(metrics)}; run: {', '.join(result.metrics) or 'none'})"
        )
    return RunComparison(result, label, tuple(metrics), run_values, tuple(comparisons), flag or task_flag,
                         tuple(notes))


def compare_runs(
    results: Sequence[RunResult],
    rows: Sequence[BaselineRow],
    labels: Sequence[str] | None = None,
    *,
    same_method_only: bool = False,
) -> ComparisonReport:
    """Compare each result with the matching ``rows`` (usually ``load_baselines()``).

    ``labels`` name the runs in the output (default: ``"<method> (run i)"``). With ``same_method_only`` a run is
    compared only with rows of its own method (names compared ignoring case, ``-``, ``_``), else it is FLAGGED.
    """
    if labels is None:
        labels = [f"{r.method} (run {i})" for i, r in enumerate(results, 1)]
    if len(labels) != len(results):
        raise ValueError(f"got {len(labels)} labels for {len(results)} results")
    return ComparisonReport(
        tuple(_compare_one(r, lab, rows, same_method_only) for r, lab in zip(results, labels, strict=True))
    )


# ---------------------------------------------------------------------------------------------------------------------
# formatting


def _fmt(value: float | None) -> str:
    if value is None:
        return _DASH
    if abs(value) >= 1000 and float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:.2f}"


def _fmt_delta(value: float | None) -> str:
    if value is None:
        return _DASH
    if abs(value) >= 1000 and float(value).is_integer():
        return f"{int(value):+,}"
    return f"{value:+.2f}"


def _describe_run(run: RunComparison) -> str:
    r = run.result
    return (
        f"system={r.system} method={r.method} backbone={r.backbone} dataset={r.dataset} split={r.split} "
        f"trainable={r.trainable_params:,}/{r.total_params:,} ({_fmt(r.trainable_percent)}%)"
    )


def _table_cells(run: RunComparison) -> tuple[list[str], list[list[str]], list[bool]]:
    """Header, body rows and a same-method mask (first body row is the run itself)."""
    header = ["source", "method", "trainable %"]
    for m in run.metrics:
        header += [m, f"Δ {m}"]
    header.append("note")
    body = [["this run", run.result.method, _fmt(run.result.trainable_percent)]]
    for m in run.metrics:
        body[0] += [_fmt(run.run_values[m]), ""]
    body[0].append("")
    same = [True]
    for comp in run.rows:
        cells = [comp.row.source, comp.row.method, _fmt(comp.row.trainable_percent)]
        for m in run.metrics:
            cells += [_fmt(comp.values[m]), _fmt_delta(comp.deltas[m])]
        cells.append(comp.row.note or "")
        body.append(cells)
        same.append(comp.same_method)
    return header, body, same


def render_markdown(report: ComparisonReport) -> str:
    """GitHub Markdown: per run a heading, a description line, the table and any FLAGGED line."""
    parts: list[str] = []
    for run in report.runs:
        parts.append(f"### {run.label}\n\n{_describe_run(run)}\n")
        if run.rows:
            header, body, same = _table_cells(run)
            aligns = ["---", "---", "---:"] + ["---:"] * (2 * len(run.metrics)) + ["---"]
            lines = ["| " + " | ".join(header) + " |", "|" + "|".join(aligns) + "|"]
            for i, (cells, is_same) in enumerate(zip(body, same, strict=True)):
                cells = [c.replace("|", "\\|") for c in cells]
                if i == 0:
                    cells[0] = f"**{cells[0]}**"
                if is_same:
                    cells[1] = f"**{cells[1]}**"
                lines.append("| " + " | ".join(cells) + " |")
            parts.append("\n".join(lines) + "\n")
        for note in run.notes:
            parts.append(f"Note: {note}\n")
        if run.flag:
            parts.append(f"**{run.flag}**\n")
    return "\n".join(parts)


def _text_renderables(report: ComparisonReport) -> list:
    from rich.table import Table
    from rich.text import Text

    out: list = []
    for run in report.runs:
        out.append(Text(f"{run.label}: {_describe_run(run)}", style="bold"))
        if run.rows:
            header, body, same = _table_cells(run)
            table = Table(show_lines=False, header_style="bold")
            for i, name in enumerate(header):
                numeric = 2 <= i < len(header) - 1
                table.add_column(name, justify="right" if numeric else "left", no_wrap=numeric)
            for i, (cells, is_same) in enumerate(zip(body, same, strict=True)):
                style = "bold green" if i == 0 else ("bold cyan" if is_same else None)
                table.add_row(*(Text(c) for c in cells), style=style, end_section=i == 0)  # Text: no markup parsing
            out.append(table)
        for note in run.notes:
            out.append(Text(f"Note: {note}", style="yellow"))
        if run.flag:
            out.append(Text(run.flag, style="bold red"))
        out.append(Text(""))
    return out


def render_text(report: ComparisonReport, width: int = 160) -> str:
    """The rich tables as plain text (no colour codes)."""
    from rich.console import Console

    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False)
    for renderable in _text_renderables(report):
        console.print(renderable)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------------------------
# plot


_SOURCE_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:olive", "tab:cyan")


def plot_report(report: ComparisonReport, path: Path | str) -> Path:
    """PNG of metric vs trainable % per (system, backbone, dataset, split, metric) of the compared runs.

    Upstream rows with a trainable % are points (one colour per source, annotated with the method); rows without
    one are dashed horizontal lines; runs are red stars (a run whose total_params is 0 is a red horizontal line).
    Parameter-count metrics (:data:`DERIVED_METRICS`) are not plotted: the x axis already shows the parameters.
    """
    from matplotlib.figure import Figure

    panels: dict[tuple[str, ...], tuple[list[RowComparison], list[RunComparison]]] = {}
    for run in report.runs:
        if not run.rows:
            continue
        r = run.result
        for m in run.metrics:
            if m in DERIVED_METRICS:
                continue
            rows, runs = panels.setdefault((r.system, r.backbone, r.dataset, r.split, m), ([], []))
            if not runs:
                rows.extend(c for c in run.rows if c.values[m] is not None)
            runs.append(run)

    ncols = min(3, max(1, len(panels)))
    nrows = max(1, -(-len(panels) // ncols))
    fig = Figure(figsize=(6.0 * ncols, 4.5 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(panels) :]:
        ax.set_axis_off()
    if not panels:
        axes[0].text(0.5, 0.5, "nothing to plot: no run was compared on a task metric", ha="center", va="center")
    for ax, (key, (rows, runs)) in zip(axes, panels.items(), strict=False):
        _plot_panel(ax, key, rows, runs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, format="png")
    return path


def _plot_panel(ax: Any, key: tuple[str, ...], rows: list[RowComparison], runs: list[RunComparison]) -> None:
    system, backbone, dataset, split, metric = key
    colors = {
        src: _SOURCE_COLORS[i % len(_SOURCE_COLORS)] for i, src in enumerate(dict.fromkeys(c.row.source for c in rows))
    }
    xs: list[float] = []
    labelled: set[str] = set()
    for comp in rows:
        y, x, source = comp.values[metric], comp.row.trainable_percent, comp.row.source
        legend = None if source in labelled else source
        labelled.add(source)
        if x is None:
            ax.axhline(y, linestyle="--", linewidth=0.8, color=colors[source], label=legend)
            ax.annotate(comp.row.method, (0.01, y), xycoords=("axes fraction", "data"), fontsize=6, va="bottom")
        else:
            xs.append(x)
            ax.scatter([x], [y], color=colors[source], s=18, label=legend)
            ax.annotate(comp.row.method, (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
    for run in runs:
        y, x = run.run_values[metric], run.result.trainable_percent
        if y is None:
            continue
        if x is None:
            ax.axhline(y, color="tab:red", linewidth=1.2, label=run.label)
        else:
            xs.append(x)
            ax.scatter([x], [y], marker="*", s=160, color="tab:red", zorder=3, label=run.label)
    if xs and min(xs) > 0 and max(xs) / min(xs) > 10:
        ax.set_xscale("log")
    ax.set_title(f"{system} {backbone}: {dataset}/{split}", fontsize=9)
    ax.set_xlabel("trainable parameters (%)")
    ax.set_ylabel(metric)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")


# ---------------------------------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    """The ``compare`` argument parser (also usable as a subparser template)."""
    parser = argparse.ArgumentParser(
        prog="python -m peft_core compare",
        description="Compare run result JSON files with the upstream baseline tables (shared/baselines/*.toml).",
    )
    parser.add_argument("results", nargs="+", type=Path, metavar="RESULT.json", help="run result files")
    parser.add_argument("--markdown", action="store_true", help="print GitHub Markdown tables instead of rich tables")
    parser.add_argument("--plot", type=Path, metavar="OUT.png", help="also write a metric-vs-trainable-%% PNG")
    parser.add_argument(
        "--baselines",
        type=Path,
        metavar="DIR",
        help="baseline tables directory (default: $VLPETL_BASELINES or the repository's shared/baselines)",
    )
    parser.add_argument(
        "--same-method", action="store_true", help="compare each run only with upstream rows of its own method"
    )
    parser.add_argument("--strict", action="store_true", help="exit with status 3 when any run is FLAGGED")
    return parser


def compare_main(argv: list[str] | None = None) -> int:
    """Run the ``compare`` command; returns the exit status (0 ok, 1 unreadable input, 3 flagged with --strict)."""
    args = build_parser().parse_args(argv)
    try:
        results = [RunResult.read(p) for p in args.results]
        rows = load_baselines(root=args.baselines)
    except (RunResultError, BaselineError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report = compare_runs(results, rows, labels=[str(p) for p in args.results], same_method_only=args.same_method)
    if args.markdown:
        print(render_markdown(report), end="")
    else:
        from rich.console import Console

        console = Console()
        if not console.is_terminal:
            console = Console(width=max(console.width, 250))
        for renderable in _text_renderables(report):
            console.print(renderable)
    if args.plot is not None:
        print(f"wrote {plot_report(report, args.plot)}", file=sys.stderr)
    return 3 if args.strict and report.flagged else 0


if __name__ == "__main__":
    sys.exit(compare_main(sys.argv[1:]))
