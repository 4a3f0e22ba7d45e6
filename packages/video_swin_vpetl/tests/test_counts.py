"""Trainable-parameter counts at Video Swin-B size (meta device) against reference/vpetl.md and v_petl.toml."""

from __future__ import annotations

from pathlib import Path

import pytest
from video_swin_vpetl.recipe_counts import count_recipe

BASELINES = Path(__file__).resolve().parents[3] / "shared" / "baselines"


@pytest.mark.parametrize("recipe,adapters,published_m", [
    ("patt-kv-128", 4_647_424, 4.65),
    ("adaptformer-64", 1_553_664, 1.55),
    ("patt-qkv-128", 6_199_552, 6.20),
    ("adaptformer-8", 204_736, 0.20),
    ("patt-kv-8", 313_024, 0.31),
    ("patt-kv-256", 9_270_784, 9.27),
])
def test_adapter_counts_match_vpetl(recipe: str, adapters: int, published_m: float) -> None:
    count = count_recipe(recipe, "video-swin-b", 51)
    assert count.adapters == adapters
    assert round(count.adapters / 1e6, 2) == published_m


@pytest.mark.parametrize("classes,head,published_m", [(51, 52_275, 6.25), (174, 178_350, 6.38)])
def test_readme_recipe_with_head(classes: int, head: int, published_m: float) -> None:
    count = count_recipe("adaptformer-64+patt-kv-128", "video-swin-b", classes)
    assert count.head == head
    assert count.trainable == 1_553_664 + 4_647_424 + head
    assert round(count.trainable / 1e6, 2) == published_m


def test_head_only_and_full() -> None:
    assert count_recipe("head-only", "video-swin-b", 51).trainable == 52_275
    full = count_recipe("full", "video-swin-b", 51)
    assert full.trainable == full.total == 87_638_984 + 52_275


def test_every_v_petl_baseline_row() -> None:
    """Each row of shared/baselines/v_petl.toml is reproduced by the matching recipe (rounded as published)."""
    from peft_core.baselines import load_baselines

    rows = load_baselines("v_petl", root=BASELINES)
    assert len(rows) == 16
    for row in rows:
        classes = {"hmdb51": 51, "ssv2": 174}.get(row.dataset, 51)
        count = count_recipe(row.method, "video-swin-b", classes)
        value = count.trainable if row.dataset != "*" else count.adapters  # '*' rows exclude the head
        if "trainable_params" in row.metrics:
            assert value == row.metrics["trainable_params"], row.method
        else:
            assert round(value / 1e6, 2) == row.metrics["trainable_params_m"], (row.method, row.dataset, value)
