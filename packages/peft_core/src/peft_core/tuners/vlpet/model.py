"""VL-PET tuner: finds the encoder sublayers, the decoder cross-attention value projections and the encoder norms of a
BART- or T5-like model, and the presets of the upstream scripts (HenryHZY/VL-PET ``scripts/image-text``)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from peft_core.registry import register_method, register_preset
from peft_core.targeting import TargetError, find_targets
from peft_core.tuner import PlannedLayer, Tuner
from peft_core.tuners.bitfit.layer import NormDeltaLayer
from peft_core.tuners.vlpet.config import VlpetConfig
from peft_core.tuners.vlpet.layer import ValueParallelAdapterLayer, VlpetSublayerLayer
from peft_core.tuners.vlpet.sublayer import Sublayer, encoder_decoder_layout

VL_MODULES_TO_SAVE = ["visual_embedding"]
"""The VL-Adapter / VL-PET visual embedding is trained in every PETL run (``unfreeze_parameters``: not
``--freeze_vis_emb``); the presets keep it trainable, so they need a model with a ``visual_embedding``
(:func:`peft_core.zoo_vl.build_vl_model`)."""


def _names(model: nn.Module, spec: str | list[str] | None, what: str) -> set[str]:
    if spec is None:
        return set()
    try:
        return {n for n, _ in find_targets(model, spec, what=what)}
    except TargetError:
        return set()


class VlpetTuner(Tuner):
    """Plans one :class:`VlpetSublayerLayer` per selected encoder sublayer (host: the sublayer's exit module), one
    :class:`ValueParallelAdapterLayer` per decoder cross-attention value projection (``vpa_dim``), and one
    :class:`~peft_core.tuners.bitfit.layer.NormDeltaLayer` per encoder norm (``encoder_layer_norms``).

    ``target_modules`` (regex or suffixes) selects encoder layers (default: all); ``exclude_modules`` drops encoder
    layers, decoder layers or single hosts.
    """

    config_cls = VlpetConfig

    def plan(self, model: nn.Module, config: VlpetConfig) -> list[PlannedLayer]:
        layout = encoder_decoder_layout(model)
        if layout is None:
            raise TargetError(
                "vlpet: no BART- or T5-like encoder layers found (expected modules like BartEncoderLayer with "
                "self_attn/fc1/fc2, or T5Block); VL-PET needs an encoder-decoder transformer"
            )
        excluded = _names(model, config.exclude_modules, "vlpet exclude_modules")

        def skip(*names: str) -> bool:
            return any(n in excluded for n in names)

        layers = layout.encoder_layers
        if config.target_modules is not None:
            chosen = {n for n, _ in find_targets(model, config.target_modules, what="vlpet target_modules")}
            layers = [(n, subs) for n, subs in layers if n in chosen]
            if not layers:
                raise TargetError(
                    f"vlpet: target_modules={config.target_modules!r} selects no encoder layer; encoder layers are "
                    f"{[n for n, _ in layout.encoder_layers][:6]}"
                )
        planned: list[PlannedLayer] = []
        for block_name, subs in layers:
            for kind in config.where:
                sub = subs[kind]
                if not skip(block_name, sub.host_name):
                    planned.append(PlannedLayer(sub.host_name, sub.exit, _sublayer_factory(sub, config)))
        if config.vpa_dim is not None:
            for name, proj in layout.value_projections:
                decoder_layer = name.rsplit(".", 2 if layout.family == "bart" else 4)[0]
                if not skip(decoder_layer, name):
                    planned.append(PlannedLayer(name, proj, _vpa_factory(proj, config)))
            if not layout.value_projections:
                raise TargetError(f"vlpet: vpa_dim={config.vpa_dim} but the model has no decoder cross-attention; "
                                  "expected an encoder-decoder model (or set vpa_dim=None)")
        if config.encoder_layer_norms:
            for name, norm in layout.encoder_norms:
                if not skip(name):
                    planned.append(PlannedLayer(name, norm, _norm_factory(norm)))
        if not planned:
            raise TargetError("vlpet: the configuration selects no host (check where, target_modules, "
                              "exclude_modules)")
        return planned


def _sublayer_factory(sub: Sublayer, config: VlpetConfig) -> Callable[[], VlpetSublayerLayer]:
    return lambda: VlpetSublayerLayer(sub, config)


def _vpa_factory(proj: nn.Linear, config: VlpetConfig) -> Callable[[], ValueParallelAdapterLayer]:
    return lambda: ValueParallelAdapterLayer(proj, config)


def _norm_factory(norm: nn.Module) -> Callable[[], NormDeltaLayer]:
    return lambda: NormDeltaLayer(norm, bias=True)


register_method(VlpetTuner())


# --------------------------------------------------------------------------------------------------------- presets
_REF = "HenryHZY/VL-PET scripts/image-text/{script} (vlpet.md Hyperparameters)"


def _bart(granularity: str, kw: dict[str, object]) -> VlpetConfig:
    """BART-base scripts: r 96, N_h 4, r_g 96, s 1, decoder VPA 96, N(0, 0.02) init, encoder norms trainable."""
    return VlpetConfig(**{
        "granularity": granularity, "adapter_kind": "multihead", "r": 96, "num_heads": 4, "gate_dim": 96,
        "scaling": 1.0, "vpa_dim": 96, "init": "bert", "encoder_layer_norms": True,
        "modules_to_save": list(VL_MODULES_TO_SAVE), **kw,
    })


def _t5(granularity: str, kw: dict[str, object]) -> VlpetConfig:
    """T5-base scripts: r 192, N_h 4, r_g 192, s 0.3, decoder VPA 96, PyTorch default init with the zero-init flags
    (multihead up, gate, VPA up), encoder norms trainable."""
    return VlpetConfig(**{
        "granularity": granularity, "adapter_kind": "multihead", "r": 192, "num_heads": 4, "gate_dim": 192,
        "scaling": 0.3, "vpa_dim": 96, "init": "torch", "adapter_up_zero_init": True, "gate_zero_init": True,
        "vpa_up_zero_init": True, "encoder_layer_norms": True, "modules_to_save": list(VL_MODULES_TO_SAVE), **kw,
    })


@register_preset("vlpet-small-bart", "VL-PET-small on VL-BART: small gate, multi-head adapter r=96 N_h=4, VPA 96",
                 _REF.format(script="VL-PET-small.sh"))
def vlpet_small_bart(**kw: object) -> VlpetConfig:
    return _bart("small", kw)


@register_preset("vlpet-middlex-bart", "VL-PET-middleX on VL-BART: token gate, multi-head adapter r=96, VPA 96",
                 _REF.format(script="VL-PET-middleX.sh"))
def vlpet_middlex_bart(**kw: object) -> VlpetConfig:
    return _bart("middleX", kw)


@register_preset("vlpet-middley-bart", "VL-PET-middleY on VL-BART: channel gate, multi-head adapter r=96, VPA 96",
                 _REF.format(script="VL-PET-middleY.sh"))
def vlpet_middley_bart(**kw: object) -> VlpetConfig:
    return _bart("middleY", kw)


@register_preset("vlpet-large-bart", "VL-PET-large on VL-BART: low-rank gate r_g=96, adapter r=96 N_h=4, VPA 96",
                 _REF.format(script="VL-PET-large.sh"))
def vlpet_large_bart(**kw: object) -> VlpetConfig:
    return _bart("large", kw)


@register_preset("vlpet-small-t5", "VL-PET-small on VL-T5: small gate, adapter r=192 N_h=4, s=0.3, VPA 96, zero inits",
                 _REF.format(script="T5-VL-PET-small.sh"))
def vlpet_small_t5(**kw: object) -> VlpetConfig:
    return _t5("small", kw)


@register_preset("vlpet-middlex-t5", "VL-PET-middleX on VL-T5: token gate, adapter r=192, s=0.3, VPA 96, zero inits",
                 _REF.format(script="T5-VL-PET-middleX.sh"))
def vlpet_middlex_t5(**kw: object) -> VlpetConfig:
    return _t5("middleX", kw)


@register_preset("vlpet-middley-t5", "VL-PET-middleY on VL-T5: channel gate, adapter r=192, s=0.3, VPA 96, zero inits",
                 _REF.format(script="T5-VL-PET-middleY.sh"))
def vlpet_middley_t5(**kw: object) -> VlpetConfig:
    return _t5("middleY", kw)


@register_preset("vlpet-large-t5", "VL-PET-large on VL-T5: gate r_g=192, adapter r=192, s=0.3, VPA 96, zero inits",
                 _REF.format(script="T5-VL-PET-large.sh"))
def vlpet_large_t5(**kw: object) -> VlpetConfig:
    return _t5("large", kw)


@register_preset("vl-adapter-glarge-bart",
                 "VL-Adapter (bottleneck r=96) + G_large (r_g=96) + lightweight design (encoder only, VPA 96), BART",
                 "VL-PET paper Table 9 (4.16%); adapter as ylsung/VL_adapter adapters/adapter_modeling.py:Adapter")
def vl_adapter_glarge_bart(**kw: object) -> VlpetConfig:
    return _bart("large", {"adapter_kind": "bottleneck", **kw})


@register_preset("compacter-glarge-bart",
                 "Compacter (PHM n=2, r=96) + G_large (r_g=96) + lightweight design (encoder only, PHM VPA 96), BART",
                 "VL-PET paper Table 9 (3.28%); PHM settings: HenryHZY/VL-PET scripts/image-text/single_compacter.sh")
def compacter_glarge_bart(**kw: object) -> VlpetConfig:
    return _bart("large", {"adapter_kind": "compacter", "vpa_kind": "compacter", "phm_division": 2, **kw})
