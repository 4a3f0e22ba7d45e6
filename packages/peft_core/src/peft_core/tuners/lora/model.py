"""LoRA tuner: dispatch on the host type, default targets (query and value projections) and presets."""

from __future__ import annotations

from torch import nn

from peft_core.archs import detect_family
from peft_core.layer import MethodLayer
from peft_core.registry import register_method, register_preset
from peft_core.targeting import TargetError
from peft_core.tuner import Tuner
from peft_core.tuners.lora.config import LoraConfig
from peft_core.tuners.lora.layer import LoraConv2dLayer, LoraLinearLayer, LoraMultiheadAttentionLayer


class LoraTuner(Tuner):
    config_cls = LoraConfig

    def default_targets(self, model: nn.Module, config: LoraConfig) -> tuple[list[str], list[str] | None]:
        arch = detect_family(model)
        if arch.family == "torch":
            return arch.attention, ["MultiheadAttention"]
        if arch.fused_qkv:
            return arch.fused_qkv, ["Linear"]
        return arch.query + arch.value, ["Linear"]

    def check_host(self, name: str, module: nn.Module, config: LoraConfig) -> None:
        if not isinstance(module, nn.Linear | nn.Conv2d | nn.MultiheadAttention):
            raise TargetError("LoRA supports nn.Linear, nn.Conv2d and nn.MultiheadAttention hosts")
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            raise TargetError(f"grouped Conv2d (groups={module.groups}) is not supported; expected groups=1")
        if config.fused_slices and isinstance(module, nn.Linear) and module.out_features % 3:
            raise TargetError(f"fused_slices needs out_features divisible by 3, got {module.out_features}")

    def create_layer(self, name: str, module: nn.Module, config: LoraConfig) -> MethodLayer:
        if isinstance(module, nn.MultiheadAttention):
            return LoraMultiheadAttentionLayer(module, config)
        if isinstance(module, nn.Conv2d):
            return LoraConv2dLayer(module, config)
        return LoraLinearLayer(module, config)


register_method(LoraTuner())


@register_preset("lora", "LoRA r=8 alpha=8 on query and value projections", "Hu et al. 2021")
def lora_default(**kw: object) -> LoraConfig:
    return LoraConfig(**{"r": 8, "alpha": 8.0, **kw})


@register_preset("lora-vl-adapter", "LoRA r=128 alpha=32 dropout 0.1 on q and v of every attention (VL-Adapter)",
                 "ylsung/VL_adapter lora/ (vlpet.md)")
def lora_vl_adapter(**kw: object) -> LoraConfig:
    return LoraConfig(**{"r": 128, "alpha": 32.0, "dropout": 0.1, **kw})


@register_preset("lora-pi-tuning", "LoRA r=16 alpha=1 on q,k,v,out of every attention (pi-Tuning scripts)",
                 "TencentARC/pi-Tuning run_scripts/refcoco (pituning.md)")
def lora_pi_tuning(**kw: object) -> LoraConfig:
    return LoraConfig(**{"r": 16, "alpha": 1.0, "target_modules": ["q_proj", "k_proj", "v_proj", "out_proj"], **kw})
