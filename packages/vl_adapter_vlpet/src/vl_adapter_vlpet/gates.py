"""VL-PET gate statistics per encoder layer and sublayer: ``gates.json`` and ``gates.png``.

Upstream ``--use_store_gate_large --store_gate_path DIR`` (HenryHZY/VL-PET@7430cad
``src/my_transformers/modeling_bart.py:BartEncoderLayer.forward``) saved, with ``torch.save``, the raw G-large gate
of the first encoder self-attention for the first batch of a task to ``DIR/{task}_gate_large_encoder_self_attention``
and called ``exit(0)``: one (B, L, d) tensor, for the paper's heat maps. Here the gates of every encoder layer and
sublayer (self-attention ``attn``, feed-forward ``ffn``) and of every granularity are summarised over a task's
validation set without stopping the run, through ``peft_core``'s opt-in recorder
(:meth:`peft_core.tuners.vlpet.layer.VlpetSublayerLayer.record_gates`): per (task, layer, sublayer) the number of
gate values, their mean, standard deviation, min and max over the non-padding tokens, and the mean gate per channel
(d values for G-large / middleY, 1 for middleX / small).

Only the encoder runs (the gates live in the encoder and do not depend on the decoder), under ``no_grad``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from peft_core.io import atomic_write_text
from peft_core.model import iter_layers
from peft_core.tuners.vlpet.layer import VlpetSublayerLayer
from torch import nn

__all__ = ["GateSite", "collect_gate_statistics", "gate_sites", "merge_summaries", "plot_gates", "recording",
           "write_gate_report"]

_LAYER_INDEX = re.compile(r"\.(?:layers|block)\.(\d+)\.")


class GateSite:
    """One gated sublayer: its host module name, encoder layer index and kind (``attn`` / ``ffn``)."""

    def __init__(self, host: str, layer: VlpetSublayerLayer) -> None:
        match = _LAYER_INDEX.search(f".{host}.")
        if match is None:
            raise ValueError(f"cannot read an encoder layer index from the module name {host!r}; expected "
                             "'...layers.N...' (BART) or '...block.N...' (T5)")
        self.host = host
        self.index = int(match.group(1))
        self.kind = layer.kind
        self.layer = layer

    @property
    def key(self) -> str:
        return f"{self.index}.{self.kind}"


def gate_sites(model: nn.Module) -> list[GateSite]:
    """Every VL-PET sublayer of ``model`` that has a gate, in encoder order (attn before ffn)."""
    sites = [GateSite(host, layer) for host, _, layer in iter_layers(model)
             if isinstance(layer, VlpetSublayerLayer) and layer.gate is not None]
    return sorted(sites, key=lambda s: (s.index, s.kind != "attn"))


@contextmanager
def recording(sites: list[GateSite]) -> Iterator[None]:
    """Record the gates of ``sites`` inside the block (fresh statistics), stop afterwards."""
    for site in sites:
        site.layer.record_gates(True)
    try:
        yield
    finally:
        for site in sites:
            site.layer.record_gates(False)


def _raw(site: GateSite) -> dict[str, Any]:
    rec = site.layer.gate_recorder
    assert rec is not None
    return {"forwards": rec.forwards, "rows": rec.rows, "count": rec.count, "total": rec.total,
            "total_sq": rec.total_sq, "min": rec.minimum, "max": rec.maximum,
            "channel_sum": [] if rec.channel_sum is None else rec.channel_sum.tolist()}


def merge_summaries(parts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Merge raw recorder states (one per process) into one summary: count, mean, std, min, max, channel_mean."""
    parts = [p for p in parts if p["count"]]
    if not parts:
        return {"forwards": 0, "rows": 0, "count": 0}
    count = sum(p["count"] for p in parts)
    rows = sum(p["rows"] for p in parts)
    mean = sum(p["total"] for p in parts) / count
    var = max(sum(p["total_sq"] for p in parts) / count - mean * mean, 0.0)
    channels = torch.tensor([p["channel_sum"] for p in parts], dtype=torch.float64).sum(dim=0) / rows
    return {"forwards": sum(p["forwards"] for p in parts), "rows": rows, "count": count, "mean": mean,
            "std": math.sqrt(var), "min": min(p["min"] for p in parts), "max": max(p["max"] for p in parts),
            "channel_mean": channels.tolist()}


@torch.no_grad()
def collect_gate_statistics(model: nn.Module, batches: Iterable[dict[str, Any]], device: torch.device,
                            max_batches: int | None = None,
                            gather: Any = None) -> list[dict[str, Any]]:
    """Run ``model.encode`` (a ``peft_core.zoo_vl.VLSeq2Seq``) over ``batches`` while recording every gate.

    Returns one row per gated sublayer: ``{"layer", "sublayer", "host", "count", "mean", "std", "min", "max",
    "channel_mean", ...}``. ``gather`` (``list -> list`` over processes, e.g. ``peft_core.runtime.distributed
    .gather_lists`` bound to the run's DistInfo) merges the statistics of evaluation shards.
    """
    sites = gate_sites(model)
    if not sites:
        raise ValueError("the model has no VL-PET gate (method.preset is not a VL-PET method with a granularity); "
                         "run.store_gates needs one")
    was_training = model.training
    model.eval()
    with recording(sites):
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            model.encode(batch["input_ids"].to(device), batch["vis_feats"].to(device), batch["vis_pos"].to(device),
                         attention_mask=batch["attention_mask"].to(device),
                         img_order_ids=_optional(batch, "img_order_ids", device),
                         obj_order_ids=_optional(batch, "obj_order_ids", device))
        raws = [_raw(site) for site in sites]
    model.train(was_training)
    parts = gather([raws]) if gather is not None else [raws]
    rows = []
    for j, site in enumerate(sites):
        stats = merge_summaries(part[j] for part in parts)
        rows.append({"layer": site.index, "sublayer": site.kind, "host": site.host, **stats})
    return rows


def _optional(batch: dict[str, Any], key: str, device: torch.device) -> torch.Tensor | None:
    value = batch.get(key)
    return value.to(device) if isinstance(value, torch.Tensor) else None


def write_gate_report(stats: dict[str, list[dict[str, Any]]], out: str | Path, meta: dict[str, Any]) -> list[Path]:
    """Write ``gates.json`` (``{**meta, "tasks": {task: rows}}``) and ``gates.png`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "gates.json"
    atomic_write_text(json_path, json.dumps({**meta, "tasks": stats}, indent=1) + "\n")
    png = plot_gates(stats, out / "gates.png", title=str(meta.get("title", "VL-PET gates")))
    return [json_path, png]


def plot_gates(stats: dict[str, list[dict[str, Any]]], path: str | Path, title: str = "VL-PET gates") -> Path:
    """Left: mean +- std of G per encoder sublayer, one line per task. Right: the per-channel mean gate of the first
    task as a (sublayer x channel) heat map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t, rows in stats.items() if any(r["count"] for r in rows)]
    if not tasks:
        raise ValueError("no gate values were recorded (empty validation sets?); nothing to plot")
    fig, (ax, heat) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [1.2, 1]})
    labels = [f"{r['layer']}.{r['sublayer']}" for r in stats[tasks[0]]]
    for k, task in enumerate(tasks):
        rows = stats[task]
        xs = [i + (k - (len(tasks) - 1) / 2) * 0.08 for i in range(len(rows))]
        ax.errorbar(xs, [r.get("mean", math.nan) for r in rows], yerr=[r.get("std", 0.0) for r in rows],
                    marker="o", capsize=3, label=task)
    ax.set_xticks(range(len(labels)), labels, rotation=60, fontsize=7)
    ax.set_xlabel("encoder layer.sublayer")
    ax.set_ylabel("gate G (mean ± std over tokens and channels)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    matrix = [r.get("channel_mean", []) for r in stats[tasks[0]]]
    width = max(len(m) for m in matrix)
    grid = torch.full((len(matrix), width), math.nan)
    for i, m in enumerate(matrix):
        grid[i, : len(m)] = torch.tensor(m, dtype=torch.float32)
    image = heat.imshow(grid.numpy(), aspect="auto", interpolation="nearest", cmap="viridis")
    heat.set_yticks(range(len(labels)), labels, fontsize=7)
    heat.set_xlabel("channel")
    heat.set_title(f"mean gate per channel ({tasks[0]})", fontsize=9)
    fig.colorbar(image, ax=heat)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
