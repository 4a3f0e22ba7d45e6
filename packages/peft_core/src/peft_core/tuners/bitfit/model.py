"""BitFit and LayerNorm-tuning tuners and presets."""

from __future__ import annotations

from torch import nn

from peft_core.layer import MethodLayer
from peft_core.registry import register_method, register_preset
from peft_core.targeting import TargetError
from peft_core.tuner import Tuner
from peft_core.tuners.bitfit.config import BitFitConfig, LayerNormTuningConfig
from peft_core.tuners.bitfit.layer import BiasDeltaLayer, NormDeltaLayer, is_rms_norm

NORM_TYPES = ["LayerNorm", "T5LayerNorm", "RMSNorm", "LayerNorm2d", "GroupNorm"]


def _can_add_bias(module: nn.Module) -> bool:
    """Modules that ``add_missing`` gives a new bias: Linear layers and RMS norms (output ``+ b``)."""
    return isinstance(module, nn.Linear) or is_rms_norm(module)


def _has_bias(module: nn.Module) -> bool:
    if isinstance(module, nn.MultiheadAttention):
        return module.in_proj_bias is not None
    return isinstance(module._parameters.get("bias"), nn.Parameter)


class BitFitTuner(Tuner):
    config_cls = BitFitConfig

    def resolve(self, model: nn.Module, config: BitFitConfig) -> list[tuple[str, nn.Module]]:
        if config.rule == "custom":
            found = super().resolve(model, config)
        else:
            found = []
            for name, module in model.named_modules():
                if not name or ".petl." in f".{name}." or _inside_mha(model, name):
                    continue
                leaf_name = name.split(".")[-1]
                if config.rule == "ofa" and not ("layer_norm" in leaf_name or "fc" in leaf_name):
                    continue
                if _has_bias(module) or (config.add_missing and _can_add_bias(module)):
                    found.append((name, module))
        if not found:
            raise TargetError(f"bitfit rule={config.rule!r}: no module with a bias found")
        return found

    def check_host(self, name: str, module: nn.Module, config: BitFitConfig) -> None:
        if not _has_bias(module) and not (config.add_missing and _can_add_bias(module)):
            raise TargetError("module has no bias (set add_missing=True to add one to a Linear or an RMS norm)")

    def create_layer(self, name: str, module: nn.Module, config: BitFitConfig) -> MethodLayer:
        return BiasDeltaLayer(module)


def _inside_mha(model: nn.Module, name: str) -> bool:
    """out_proj of an nn.MultiheadAttention is handled by the attention's own layer."""
    if "." not in name:
        return False
    return isinstance(model.get_submodule(name.rsplit(".", 1)[0]), nn.MultiheadAttention)


class LayerNormTuner(Tuner):
    config_cls = LayerNormTuningConfig

    def default_targets(self, model: nn.Module, config: LayerNormTuningConfig) -> tuple[None, list[str]]:
        return None, NORM_TYPES

    def check_host(self, name: str, module: nn.Module, config: LayerNormTuningConfig) -> None:
        if not isinstance(getattr(module, "weight", None), nn.Parameter):
            raise TargetError("normalisation layer without a learnable gain")
        if not (isinstance(module, nn.LayerNorm) or is_rms_norm(module)):
            raise TargetError("expected nn.LayerNorm or an RMS norm (T5LayerNorm, RMSNorm)")

    def create_layer(self, name: str, module: nn.Module, config: LayerNormTuningConfig) -> MethodLayer:
        return NormDeltaLayer(module, config.bias)


register_method(BitFitTuner())
register_method(LayerNormTuner())


@register_preset("bitfit", "BitFit: every bias", "Ben Zaken et al. 2022")
def bitfit_all(**kw: object) -> BitFitConfig:
    return BitFitConfig(**{"rule": "all", **kw})


@register_preset("bitfit-ofa", "BitFit, pi-Tuning/OFA rule: LayerNorm and fc1/fc2 biases", "pituning.md --bitfit")
def bitfit_ofa(**kw: object) -> BitFitConfig:
    return BitFitConfig(**{"rule": "ofa", **kw})


@register_preset("bitfit-vl-adapter", "BitFit, VL-Adapter --unfreeze_bias: every parameter named *bias*",
                 "ylsung/VL_adapter (vlpet.md: BitFit --unfreeze_bias)")
def bitfit_vl_adapter(**kw: object) -> BitFitConfig:
    """Upstream unfreezes every parameter whose name contains 'bias'; on transformers models that is exactly the
    biases of every Linear and LayerNorm, i.e. rule 'all'."""
    return BitFitConfig(**{"rule": "all", **kw})


@register_preset("layernorm", "LayerNorm tuning: gains and biases of every normalisation layer", "")
def layernorm_all(**kw: object) -> LayerNormTuningConfig:
    return LayerNormTuningConfig(**kw)
