"""PATT tuner: attention hosts (fused qkv or separate q/k/v projections), default targets and presets."""

from __future__ import annotations

import re

from torch import nn

from peft_core.registry import register_method, register_preset
from peft_core.targeting import TargetError, find_targets
from peft_core.tuner import Tuner
from peft_core.tuners.patt.config import PattConfig
from peft_core.tuners.patt.layer import MHA_UNSUPPORTED, PattLayer, host_layout, is_attention_host

UPSTREAM = "bruceyo/V-PETL@661198dd38:models/video_swin_transformer_patt.py:WindowAttention3D"


class PattTuner(Tuner):
    """One :class:`PattLayer` per attention module.

    Default targets (no ``target_modules`` / ``target_types``): every module owning a fused ``qkv`` Linear or a
    q/k/v Linear triple (timm ``Attention`` / Swin ``WindowAttention`` / Video Swin ``WindowAttention3D``,
    BERT ``*SelfAttention``, BART / CLIP / ViT / T5 attentions, cross-attentions included).
    """

    config_cls = PattConfig

    def resolve(self, model: nn.Module, config: PattConfig) -> list[tuple[str, nn.Module]]:
        if config.target_modules is not None or config.target_types:
            return super().resolve(model, config)
        names = [n for n, m in model.named_modules() if n and is_attention_host(m)]
        if not names:
            has_mha = any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
            raise TargetError(
                "patt: found no attention module with a fused `qkv` Linear or q/k/v Linear children; "
                + (MHA_UNSUPPORTED if has_mha else "give target_modules naming the attention modules")
            )
        pattern = "|".join(re.escape(n) for n in names)
        return find_targets(model, pattern, exclude_modules=config.exclude_modules, what=config.method)

    def check_host(self, name: str, module: nn.Module, config: PattConfig) -> None:
        kind, projections = host_layout(module)
        if kind == "separate":
            ins = {c: projections[c].in_features for c in config.slices}
            if len(set(ins.values())) != 1:
                raise TargetError(
                    f"PATT shares one down projection across the adapted projections, but their in_features "
                    f"differ: {ins}; expected equal input sizes"
                )

    def create_layer(self, name: str, module: nn.Module, config: PattConfig) -> PattLayer:
        return PattLayer(module, config)


register_method(PattTuner())


@register_preset("patt-kv-m128", "V-PETL PATT on K and V, m=128, s=0.8, upstream init (README HMDB51 recipe)",
                 f"{UPSTREAM}; README --att_mid_dim 128 --att_prefix_mode patt_kv --att_prefix_scale 0.8")
def patt_kv_m128(**kw: object) -> PattConfig:
    return PattConfig(**{"mode": "patt_kv", "mid_dim": 128, "scale": 0.8, "init": "upstream", **kw})


@register_preset("patt-qkv-m128", "V-PETL PATT on Q, K and V, m=128, s=0.8, upstream init",
                 f"{UPSTREAM}; --att_prefix_mode patt_qkv")
def patt_qkv_m128(**kw: object) -> PattConfig:
    return PattConfig(**{"mode": "patt_qkv", "mid_dim": 128, "scale": 0.8, "init": "upstream", **kw})


@register_preset("patt-kv-m64", "V-PETL PATT on K and V, m=64 (upstream default --att_mid_dim), s=0.8, upstream init",
                 f"{UPSTREAM}; --att_prefix_mode patt_kv")
def patt_kv_m64(**kw: object) -> PattConfig:
    return PattConfig(**{"mode": "patt_kv", "mid_dim": 64, "scale": 0.8, "init": "upstream", **kw})
