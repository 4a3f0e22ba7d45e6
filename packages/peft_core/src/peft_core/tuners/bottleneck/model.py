"""Bottleneck adapter tuner: default placements per architecture and presets."""

from __future__ import annotations

from torch import nn

from peft_core.archs import detect_family
from peft_core.registry import register_method, register_preset
from peft_core.tuner import Tuner
from peft_core.tuners.bottleneck.config import BottleneckConfig
from peft_core.tuners.bottleneck.layer import BottleneckLayer


class BottleneckTuner(Tuner):
    config_cls = BottleneckConfig

    def default_targets(self, model: nn.Module, config: BottleneckConfig) -> tuple[list[str], None]:
        arch = detect_family(model)
        if config.placement == "houlsby":
            return arch.attn_out + arch.ffn_out, None
        if config.placement == "pfeiffer":
            return arch.ffn_out, None
        # parallel to the whole FFN: its output module is the FFN's last Linear; the input must be the FFN input,
        # so target the FFN container where the family has one.
        ffn = {"swin": ["mlp"], "timm_vit": ["mlp"], "clip": ["mlp"], "vit": ["mlp"], "t5": ["DenseReluDense"]}.get(
            arch.family)
        if ffn is None:
            from peft_core.targeting import TargetError

            raise TargetError(f"no default parallel FFN target for family {arch.family!r}; give target_modules")
        return ffn, None

    def create_layer(self, name: str, module: nn.Module, config: BottleneckConfig) -> BottleneckLayer:
        return BottleneckLayer(module, config)


register_method(BottleneckTuner())


@register_preset("houlsby", "Houlsby adapter (serial, after attention and FFN), r=64, BERT init",
                 "Houlsby et al. 2019; AdapterHub double_seq_bn")
def houlsby(**kw: object) -> BottleneckConfig:
    return BottleneckConfig(**{"placement": "houlsby", "bottleneck_dim": 64, "init": "bert", **kw})


@register_preset("pfeiffer", "Pfeiffer adapter (serial, after the FFN), r=64", "Pfeiffer et al. 2021; seq_bn")
def pfeiffer(**kw: object) -> BottleneckConfig:
    return BottleneckConfig(**{"placement": "pfeiffer", "bottleneck_dim": 64, **kw})


@register_preset("adaptformer-64", "AdaptFormer FFN adapter, r=64, s=0.1, LoRA init (V-PETL --ffn_adapt)",
                 "bruceyo/V-PETL models/video_swin_transformer_patt.py:Adapter; Chen et al. 2022")
def adaptformer_64(**kw: object) -> BottleneckConfig:
    return BottleneckConfig(**{"placement": "scaled_parallel", "bottleneck_dim": 64, "scale": 0.1, "init": "lora",
                               "activation": "relu", **kw})


@register_preset("vl-adapter", "VL-Adapter single adapter: serial, reduction 8, gelu_new, after attention and FFN",
                 "ylsung/VL_adapter adapters/ (Sung et al. 2022)")
def vl_adapter(**kw: object) -> BottleneckConfig:
    return BottleneckConfig(**{"placement": "houlsby", "bottleneck_dim": None, "reduction_factor": 8,
                               "activation": "gelu_new", **kw})
