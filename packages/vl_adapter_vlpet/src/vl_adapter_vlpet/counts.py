"""Trainable-parameter percentages of every method on real-size VL-BART / VL-T5 (meta device) next to the paper.

Convention (upstream ``TrainerBase.print_trainable_params_percentage``, HenryHZY/VL-PET@7430cad
``src/trainer_base.py``): ``100 * trainable / total`` over every parameter of the VL model, the method's and the
visual embedding's included, tied weights once; the VL vocabularies (50,465 / 32,200 tokens) are part of it.

Two columns: ``percent`` is peft_core's count, in which the zero-initialised deltas that train a bias or norm the
model already has (BitFit, LoRA's biases, VL-PET's encoder norms) are parameters of their own, so their size is in
the total twice (the frozen original and the delta). ``percent_upstream`` counts each such tensor once, as upstream,
which trains it in place. They differ by < 0.01 points.

===================  ======================  =======================  ===============================================
method               BART-base ours / paper  T5-base ours / paper     why they differ (see methods.py)
===================  ======================  =======================  ===============================================
vl-adapter           4.1767 / 4.18           7.9991 / 7.98            T5: upstream's --unfreeze_layer_norms misses
                                                                      T5's norms (7.9795 with method.layer_norms=
                                                                      false); trained here as the script asks
compacter-glarge-lw  3.2753 / 3.28 (Table 9) -                        (3.2749 with the deltas counted twice)
===================  ======================  =======================  ===============================================

Every other row rounds to the paper's value; all are within 0.05 points (``tests/test_counts.py``).

    vl-pet counts --backbone bart-base
"""

from __future__ import annotations

import copy
import functools
from dataclasses import asdict, dataclass

import torch
from peft_core.model import iter_layers
from peft_core.report import count_parameters
from peft_core.tuners.bitfit.layer import BiasDeltaLayer, NormDeltaLayer
from peft_core.zoo_vl import build_vl_model
from torch import nn

from vl_adapter_vlpet.methods import METHODS, apply_method, method_names
from vl_adapter_vlpet.models.config import BACKBONES


@dataclass(frozen=True)
class CountRow:
    """One method on one backbone at real size."""

    method: str
    backbone: str
    trainable: int
    total: int
    base_total: int
    shadowed: int
    table: str
    paper_percent: float | None

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total

    @property
    def percent_upstream(self) -> float:
        """Deltas of existing biases / norms counted once (upstream trains them in place)."""
        return 100.0 * self.trainable / (self.total - self.shadowed)

    def to_dict(self) -> dict:
        return {**asdict(self), "percent": self.percent, "percent_upstream": self.percent_upstream}


def shadowed_parameters(model: nn.Module) -> int:
    """Parameters of delta layers that duplicate a tensor the model already has (its bias, its norm's gain / bias)."""
    total = 0
    for _, host, layer in iter_layers(model):
        if isinstance(layer, BiasDeltaLayer) and isinstance(getattr(host, "bias", None), torch.Tensor):
            total += sum(p.numel() for p in layer.parameters())
        elif isinstance(layer, NormDeltaLayer):
            total += layer.gain.numel()
            if layer.bias is not None and isinstance(getattr(host, "bias", None), torch.Tensor):
                total += layer.bias.numel()
    return total


@functools.cache
def _meta_model(backbone: str) -> nn.Module:
    return build_vl_model(backbone, device="meta")


def count_method(method: str, backbone: str, layer_norms: bool | None = None) -> CountRow:
    """Build the real-size VL model on the meta device, apply ``method`` and count."""
    model = copy.deepcopy(_meta_model(backbone))
    base = sum(p.numel() for p in model.parameters())
    applied = apply_method(model, method, backbone, layer_norms=layer_norms)
    report = count_parameters(model)
    recipe = applied.recipe
    return CountRow(method, backbone, report.trainable, report.total, base, shadowed_parameters(model),
                    recipe.table, recipe.percent)


def real_size_counts(backbone: str) -> list[CountRow]:
    """Every method available for ``backbone``, in table order."""
    if backbone not in BACKBONES:
        raise ValueError(f"backbone={backbone!r} is not allowed; expected one of {list(BACKBONES)}")
    return [count_method(name, backbone) for name in method_names(backbone)]


def format_counts(rows: list[CountRow]) -> str:
    """A fixed-width table: trainable, total, both percentages, the paper's and the difference."""
    header = f"{'method':<22} {'trainable':>12} {'total':>13} {'ours %':>8} {'upstream %':>10} {'paper %':>8} " \
             f"{'diff':>6}  table"
    lines = [header, "-" * len(header)]
    for r in rows:
        paper = f"{r.paper_percent:8.2f}" if r.paper_percent is not None else f"{'-':>8}"
        diff = f"{r.percent_upstream - r.paper_percent:+6.2f}" if r.paper_percent is not None else f"{'':>6}"
        lines.append(f"{r.method:<22} {r.trainable:>12,} {r.total:>13,} {r.percent:8.4f} {r.percent_upstream:10.4f} "
                     f"{paper} {diff}  {r.table}")
    return "\n".join(lines)


def print_counts(backbones: list[str] | None = None) -> int:
    """Print the count table of each backbone (``vl-pet counts``)."""
    for backbone in backbones or list(BACKBONES):
        print(f"{backbone} (meta device, {len(method_names(backbone))} methods of {len(METHODS)})")
        print(format_counts(real_size_counts(backbone)))
        print()
    return 0
