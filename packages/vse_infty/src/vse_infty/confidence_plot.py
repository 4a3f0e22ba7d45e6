"""UniPT confidence weights: their mean per layer over an evaluation pass, and a PNG of them per tower.

UniPT aggregates the per-layer interactions of its side network with ``p = softmax_i(gate(a * t_i))`` (the
"confidence" of layer i, one row per input: Paranioar/UniPT@3fa457d987:VSE-infty/lib/adapter_for_cnn.py and
adapter_for_transformer.py, ``Our_tuning_for_*.forward``). ``VSEModel.confidences()`` returns the last forward's
``p`` of each tower; :class:`ConfidenceMeter` averages them over every image / caption of a split, and
:func:`plot_confidences` draws one bar chart per tower (a matplotlib ``Figure`` without pyplot: the Agg canvas,
no display needed).
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["ConfidenceMeter", "plot_confidences"]


class ConfidenceMeter:
    """Running per-layer sums of confidence rows ``(B, n_layers)``, per tower."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def update(self, tower: str, confidence: torch.Tensor) -> None:
        rows = confidence.detach().float().reshape(-1, confidence.shape[-1]).cpu()
        if tower in self.sums and self.sums[tower].shape[0] != rows.shape[1]:
            raise ValueError(f"confidence of tower {tower!r} has {rows.shape[1]} layers, earlier batches had "
                             f"{self.sums[tower].shape[0]}")
        self.sums[tower] = self.sums.get(tower, torch.zeros(rows.shape[1], dtype=torch.float64)) + rows.double().sum(0)
        self.counts[tower] = self.counts.get(tower, 0) + rows.shape[0]

    def merge(self, sums: dict[str, list[float]], counts: dict[str, int]) -> None:
        """Add sums / counts of another process (lists, as gathered by ``gather_lists``)."""
        for tower, values in sums.items():
            tensor = torch.tensor(values, dtype=torch.float64)
            self.sums[tower] = self.sums.get(tower, torch.zeros_like(tensor)) + tensor
            self.counts[tower] = self.counts.get(tower, 0) + counts[tower]

    def state(self) -> tuple[dict[str, list[float]], dict[str, int]]:
        return {k: v.tolist() for k, v in self.sums.items()}, dict(self.counts)

    def means(self) -> dict[str, list[float]]:
        """``{tower: [mean p_i over the rows seen]}`` (each list sums to 1, up to rounding)."""
        return {k: (v / self.counts[k]).tolist() for k, v in self.sums.items() if self.counts[k]}


def plot_confidences(means: dict[str, list[float]], path: str | Path, title: str = "UniPT confidence weights",
                     layer_labels: dict[str, list[str]] | None = None) -> Path:
    """One bar chart per tower of the mean confidence of each target layer; writes a PNG at ``path``."""
    if not means:
        raise ValueError("no UniPT confidence weights to plot (the model has no UniPT side network)")
    from matplotlib.figure import Figure  # no pyplot: the Agg canvas, no display

    fig = Figure(figsize=(4.5 * len(means), 3.6), layout="constrained")
    axes = fig.subplots(1, len(means), squeeze=False)[0]
    for ax, (tower, values) in zip(axes, sorted(means.items())):
        labels = (layer_labels or {}).get(tower) or []
        if len(labels) != len(values):
            labels = [str(i) for i in range(len(values))]
        ax.bar(range(len(values)), values, color="tab:blue")
        ax.axhline(1.0 / len(values), color="tab:gray", linestyle="--", linewidth=0.8, label="uniform")
        ax.set_xticks(range(len(values)), labels, fontsize=7)
        ax.set_xlabel("target layer")
        ax.set_ylabel("mean confidence")
        ax.set_title(f"{tower} tower", fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, format="png")
    return path
