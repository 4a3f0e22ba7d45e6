"""Trainable-parameter counts of a recipe on a real-size Video Swin, built on the meta device (no memory).

    video-swin-vpetl recipe adaptformer-64+patt-kv-128 --classes 51
    ->  adapters 6,201,088  head 52,275  trainable 6,253,363 (6.25M)   upstream (v_petl.toml): 6.25M

The upstream numbers come from shared/baselines/v_petl.toml when it can be found (see peft_core.baselines).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from video_swin_vpetl.methods import apply_recipe, build_recipe
from video_swin_vpetl.models import BACKBONE_NAMES, create_model


@dataclass(frozen=True)
class RecipeCount:
    recipe: str
    adapters: int
    head: int
    trainable: int
    total: int


def count_recipe(recipe: str, arch: str = "video-swin-b", num_classes: int = 51) -> RecipeCount:
    """Counts of ``recipe`` on ``arch`` with a V-PETL head of ``num_classes`` classes (meta device)."""
    with torch.device("meta"):
        model = create_model(arch, num_classes=num_classes)
        built = build_recipe(recipe)
        report = apply_recipe(model, built)
    head = sum(p.numel() for p in model.get_submodule(built.head).parameters())
    adapters = report.trainable - head if not built.full else 0
    return RecipeCount(built.name, adapters, head, report.trainable, report.total)


def upstream_counts(method: str, dataset: str) -> dict[str, float]:
    """``{"trainable_params_m" | "trainable_params": value}`` of the v_petl.toml row for ``method`` (empty if none)."""
    try:
        from peft_core.baselines import load_baselines, normalize_name

        rows = load_baselines("v_petl")
    except Exception:  # the tables are optional here (an installed package may not ship them)
        return {}
    for row in rows:
        if normalize_name(row.method) == normalize_name(method) and row.dataset in ("*", dataset):
            return dict(row.metrics)
    return {}


def print_recipe_counts(recipe: str, arch: str, num_classes: int) -> int:
    count = count_recipe(recipe, arch, num_classes)
    dataset = {51: "hmdb51", 174: "ssv2"}.get(num_classes, "*")
    print(f"{BACKBONE_NAMES.get(arch, arch)} + {count.recipe} ({num_classes} classes)")
    print(f"  adapters  {count.adapters:>12,}")
    print(f"  head      {count.head:>12,}")
    print(f"  trainable {count.trainable:>12,}  ({count.trainable / 1e6:.2f}M, "
          f"{100 * count.trainable / count.total:.3f}% of {count.total:,})")
    name = "head-only" if count.recipe == "head-only" else count.recipe
    upstream = upstream_counts(name, dataset) if arch == "video-swin-b" else {}
    if upstream:
        print(f"  upstream (shared/baselines/v_petl.toml): {upstream}")
    return 0
