"""LST tuner (one model-level layer on the root), Fisher-importance initialisation and presets."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from peft_core.model import adapter_records, disable_adapters, iter_layers
from peft_core.registry import register_method, register_preset
from peft_core.targeting import TargetError, find_targets
from peft_core.tuner import PlannedLayer, Tuner
from peft_core.tuners.lst.config import LSTConfig
from peft_core.tuners.lst.families import FAMILIES, StackRef, find_stacks
from peft_core.tuners.lst.layer import LSTLayer


class LSTTuner(Tuner):
    """Finds the backbone stacks (at most one encoder and one decoder), checks sizes and layer indices, and plans
    one :class:`LSTLayer` on the model root."""

    config_cls = LSTConfig

    def stacks(self, model: nn.Module, config: LSTConfig) -> list[StackRef]:
        names = None
        if config.target_modules is not None:
            names = [n for n, _ in find_targets(model, config.target_modules, what="lst target_modules")]
        stacks = find_stacks(model, names)
        if config.exclude_modules is not None:
            excluded = {n for n, _ in find_targets(model, config.exclude_modules, what="lst exclude_modules")}
            stacks = [s for s in stacks if s.name not in excluded]
        supported = sorted({c for f in FAMILIES for c in f.stack_classes})
        if not stacks:
            raise TargetError(f"lst: no supported transformer stack found; LST supports stacks of class {supported}")
        encoders = [s for s in stacks if not s.is_decoder]
        decoders = [s for s in stacks if s.is_decoder]
        if len(encoders) != 1 or len(decoders) > 1:
            raise TargetError(
                f"lst: expected one encoder stack and at most one decoder stack, found encoders "
                f"{[s.name for s in encoders]} and decoders {[s.name for s in decoders]}; select them with "
                "target_modules"
            )
        for s in decoders:
            if not s.family.supports_decoder:
                raise TargetError(f"lst: {s.name!r} is a {s.family.name} decoder; only T5 decoders are supported")
        return [*encoders, *decoders]

    def plan(self, model: nn.Module, config: LSTConfig) -> list[PlannedLayer]:
        if any(r.config.method == "lst" for r in adapter_records(model).values()):
            raise TargetError("lst: this model already has an LST adapter; delete it before adding another")
        stacks = self.stacks(model, config)
        widths = set()
        for s in stacks:
            cfg = s.module.config
            s.family.check(cfg, config.reduction_factor, f"lst stack {s.name!r}")
            widths.add(s.family.hidden(cfg))
            n = len(s.family.blocks(s.module))
            field = "decoder_side_layers" if s.is_decoder and config.decoder_side_layers is not None else "side_layers"
            bad = [i for i in config.layers_for(s.is_decoder, n) if i >= n]
            if bad:
                raise TargetError(f"lst: {field}={getattr(config, field)!r} names layers {bad} but {s.name!r} has "
                                  f"{n} layers (0..{n - 1})")
        if len(widths) != 1:
            raise TargetError(f"lst: the encoder and decoder must have the same width, got {sorted(widths)}")
        return [PlannedLayer("", model, lambda: LSTLayer(model, stacks, config))]


register_method(LSTTuner())


def lst_layer(model: nn.Module, name: str = "default") -> LSTLayer:
    """The :class:`LSTLayer` of adapter ``name``."""
    for _, _, layer in iter_layers(model, name):
        if isinstance(layer, LSTLayer):
            return layer
    raise ValueError(
        f"adapter name={name!r} is not an LST adapter on this model; it has {list(adapter_records(model))}")


def lst_fisher_importance(model: nn.Module, batches: Iterable[Any], loss_fn: Any, name: str = "default",
                          mode: str = "per_batch", max_batches: int | None = None) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher of the backbone parameters the side network is pruned from, computed on the plain
    backbone (adapters disabled) with :func:`peft_core.tuners.pituning.fisher.compute_fisher`.

    ``loss_fn(model, batch)`` returns the loss (e.g. ``model(**batch).loss``). Upstream (``seq2seq/pruning/fisher.py``)
    sums squared gradients over 1024 batches of ONE sample each: pass such batches (``per_batch`` then equals
    per-sample). The normalisation by the sample count does not change the ranking.
    """
    from peft_core.tuners.pituning.fisher import compute_fisher

    layer = lst_layer(model, name)
    params = dict(model.named_parameters())
    wanted = {n: params[n] for n in layer.backbone_parameter_names()}
    with disable_adapters(model):
        emb = compute_fisher(model, batches, loss_fn, params=wanted, mode=mode, max_batches=max_batches,
                             progress=False)
    return emb.tensors


def apply_fisher_init(model: nn.Module, batches: Iterable[Any], loss_fn: Any, name: str = "default",
                      mode: str = "per_batch", max_batches: int | None = None) -> dict[str, torch.Tensor]:
    """Re-initialise the side blocks of LST adapter ``name`` by Fisher-importance pruning of the backbone
    (upstream ``--load_side_pretrained_weights fisher-v2``). Samplers, gates and upsampler are left as they are.
    Returns the importances used."""
    importance = lst_fisher_importance(model, batches, loss_fn, name, mode=mode, max_batches=max_batches)
    missing = [n for n in lst_layer(model, name).backbone_parameter_names() if n not in importance]
    if missing:
        raise ValueError(f"no gradient reached backbone parameters {missing[:4]}; check loss_fn")
    lst_layer(model, name).init_from_backbone(model, importance)
    return importance


@register_preset(
    "lst-t5-base",
    "LST on T5-base: r=8, side layers 1,2,3,5,6,7,9,10,11 (encoder and decoder), learnable gates, bias samplers",
    "ylsung/Ladder-Side-Tuning seq2seq/scripts/ladder_side_tuning_base.sh (uniperceiver_lst.md)",
)
def lst_t5_base(**kw: object) -> LSTConfig:
    layers = [1, 2, 3, 5, 6, 7, 9, 10, 11]
    return LSTConfig(**{"reduction_factor": 8, "side_layers": layers, "decoder_side_layers": layers, **kw})


@register_preset(
    "lst-vl-t5",
    "LST on VL-T5 (T5-base): r=4, every layer, learnable gates, bias samplers",
    "ylsung/Ladder-Side-Tuning VL-T5/scripts/image/LST.sh (--side_reduction_factor 4); vlpet.md T5-base LST 7.46%",
)
def lst_vl_t5(**kw: object) -> LSTConfig:
    return LSTConfig(**{"reduction_factor": 4, **kw})
