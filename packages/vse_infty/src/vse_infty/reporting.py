"""Reports: run results (a ``peft_core.results.RunResult``, system ``vse_infty``, and a readable table), real-size
parameter counts per tower (``vse-infty params``) and the training-step memory table (``vse-infty memory``).

Names follow shared/baselines/vse_infty.toml: dataset ``f30k_retrieval`` / ``coco_retrieval``; split ``test`` for the
Flickr30K 1K test and ``test_1k`` for COCO ``testall`` evaluated as upstream ``evalrank(fold5=True)`` (the mean of
the five 1K folds; the full 5K numbers are stored beside them as ``coco5k_*``); backbone
``resnext101-wsl+bert-base`` for the upstream default towers. Metrics: ``i2t_r1/r5/r10/medr/meanr``,
``t2i_r1/r5/r10/medr/meanr`` and ``rsum`` (R@K in %).
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path
from typing import Any

import torch
from peft_core.results import RunResult

SYSTEM = "vse_infty"
TASK = "retrieval"

RECALLS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")
RANKS = ("i2t_medr", "i2t_meanr", "t2i_medr", "t2i_meanr")


def dataset_name(dataset: str) -> str:
    return f"{dataset}_retrieval"


def split_name(dataset: str, split: str, fold5: bool) -> str:
    """``test_1k`` for COCO's 5K test evaluated in five 1K folds, else the split's own name."""
    return "test_1k" if dataset == "coco" and fold5 else split


GENERIC_DIRS = ("model", "models", "weights", "checkpoint", "pretrained", "snapshot")


def _text_name(model_cfg: Any) -> str:
    """``bert-base`` for a bert-base directory or BERT-base's architecture; else the directory's name."""
    if model_cfg.text_encoder:
        path = Path(str(model_cfg.text_encoder))
        name = (path.parent.name if path.name.lower() in GENERIC_DIRS else path.name).lower().replace("_", "-")
        return "bert-base" if name.startswith("bert-base") else name or "text-encoder"
    if model_cfg.text_config is None:
        return "bert-base"
    return f"{model_cfg.text_config.get('model_type', 'bert')}-from-config"


def _image_name(model_cfg: Any) -> str:
    """``resnext101-wsl`` for the upstream CNN (timm ``resnext101_32x8d``, WSL weights layout, no size changes)."""
    if model_cfg.image_source == "precomp":
        return "precomp-regions"
    name = model_cfg.backbone.split(".")[0].replace("_", "-")
    if model_cfg.backbone_kwargs:
        return f"{name}-custom"
    if model_cfg.backbone.startswith("resnext101_32x8d") and model_cfg.backbone_pretrained_source == "wsl":
        return "resnext101-wsl"
    return name


def backbone_name(model_cfg: Any) -> str:
    """``<image tower>+<text tower>``: ``resnext101-wsl+bert-base`` for the upstream default."""
    return f"{_image_name(model_cfg)}+{_text_name(model_cfg)}"


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated memory; CPU: peak resident set size of this process (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def make_result(*, dataset: str, split: str, method: str, backbone: str, metrics: dict[str, float], trainable: int,
                total: int, seed: int | None, wall_time_s: float, peak_mb: float | None,
                extra: dict[str, Any]) -> RunResult:
    env = RunResult.collect_environment("vse-infty")
    return RunResult(system=SYSTEM, task=TASK, dataset=dataset, split=split, method=method, backbone=backbone,
                     metrics={k: float(v) for k, v in metrics.items()}, trainable_params=trainable,
                     total_params=total, seed=seed, wall_time_s=wall_time_s, peak_memory_mb=peak_mb, extra=extra,
                     **env)


def metrics_line(metrics: dict[str, float], prefix: str = "") -> str:
    """``i2t R@1/5/10 a/b/c medr m meanr n | t2i ... | rsum s`` (upstream's log lines in one)."""
    def part(d: str) -> str:
        return (f"{d} R@1/5/10 {metrics[f'{prefix}{d}_r1']:.1f}/{metrics[f'{prefix}{d}_r5']:.1f}/"
                f"{metrics[f'{prefix}{d}_r10']:.1f} medr {metrics[f'{prefix}{d}_medr']:.1f} "
                f"meanr {metrics[f'{prefix}{d}_meanr']:.1f}")
    return f"{part('i2t')} | {part('t2i')} | rsum {metrics[f'{prefix}rsum']:.1f}"


def result_table(result: RunResult) -> str:
    """The result as a small text table (:meth:`peft_core.results.RunResult.table`)."""
    details = []
    if "num_images" in result.extra:
        images, captions = result.extra["num_images"], result.extra.get("num_captions", "?")
        details.append(("images / captions", f"{images} / {captions}"))
    return result.table(details)


# ------------------------------------------------------------------------------------------- parameter counts
def tower_counts(model: Any) -> dict[str, dict[str, int]]:
    """Per tower: ``trainable`` (all), ``method`` (peft_core parameters, e.g. the UniPT side network), ``heads``
    (trainable parameters outside the backbone: GPO, fc, linear, MLP) and ``total``."""
    out = {}
    for tower, encoder in model.encoders().items():
        named = list(encoder.named_parameters())
        out[tower] = {
            "trainable": sum(p.numel() for _, p in named if p.requires_grad),
            "method": sum(p.numel() for n, p in named if p.requires_grad and ".petl." in f".{n}."),
            "heads": sum(p.numel() for n, p in named if p.requires_grad and not n.startswith("backbone.")),
            "total": sum(p.numel() for _, p in named),
        }
    return out


def print_param_counts(config: Any, as_json: bool = False) -> int:
    """Build the configured towers on the meta device (no weights read) and print the trainable counts per tower.

    At the default (VSE-infty) size the UniPT side networks are 5,921,281 (text) and 6,433,537 (image) parameters,
    the upstream counts (shared/baselines/unipt.toml)."""
    from peft_core.report import count_parameters

    from vse_infty.model.build import build_model

    model = build_model(config.model, config.method, device="meta")
    towers = tower_counts(model)
    report = count_parameters(model)
    payload = {"method": config.method.name, "backbone": backbone_name(config.model),
               "tower_methods": getattr(model, "tower_methods", {}), "towers": towers,
               "trainable": report.trainable, "total": report.total, "percent": report.percent}
    if as_json:
        print(json.dumps(payload, indent=2))
        return 0
    print(f"{config.method.name} on {payload['backbone']} (presets {payload['tower_methods']}; meta device)")
    print(f"{'tower':<8} {'trainable':>12} {'of which method':>16} {'heads':>10} {'total':>13}")
    for tower, c in towers.items():
        print(f"{tower:<8} {c['trainable']:>12,} {c['method']:>16,} {c['heads']:>10,} {c['total']:>13,}")
    print(f"trainable {report.trainable:,} of {report.total:,} = {report.percent:.3f}%")
    return 0


# ------------------------------------------------------------------------------------------------------ memory
def memory_main(methods: list[str], config_path: str | None, overrides: list[str], *, batch: int, device: str,
                output: Path) -> int:
    """One fresh process per method (:func:`vse_infty.memory.measure_in_subprocess`, helper of the model part):
    peak memory and time of one training step on the configured towers (random weights); prints a table and
    writes the rows as JSON to ``output``."""
    from peft_core.io import atomic_write_text

    from vse_infty.config import load_config
    from vse_infty.memory import measure_in_subprocess

    rows = []
    for method in methods:
        config = load_config(config_path, [*overrides, f"method.name={method}"])
        try:
            rows.append(measure_in_subprocess(config.model, config.method, batch_size=batch, device=device))
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print(f"{'method':<16} {'trainable':>12} {'before MiB':>11} {'step peak MiB':>14} {'step adds MiB':>14} "
          f"{'step s':>7}")
    for r in rows:
        print(f"{r['method']:<16} {r['trainable']:>12,} {r['before_mb']:>11.0f} {r['peak_mb']:>14.0f} "
              f"{r['step_mb']:>14.0f} {r['step_s']:>7.2f}")
    if rows:
        r = rows[0]
        print(f"input {r['batch_size']} x {r['input_size']} px, {r['seq_len']} tokens, {r['device']}, "
              f"probe {r['probe']}")
    atomic_write_text(Path(output), json.dumps(rows, indent=2) + "\n")
    print(f"wrote {output}")
    return 0
