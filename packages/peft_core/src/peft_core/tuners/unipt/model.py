"""UniPT tuner: one :class:`~peft_core.tuners.unipt.layer.UniPTLayer` on the model root, and the registered presets.

``add_adapter(model, make_config("unipt-vse-text"))`` puts the side network in ``model.petl.default`` (host name
``""``: the root) and hooks the feature layers; the plan resolves and checks every module name before the model is
touched. Upstream: Paranioar/UniPT @ 3fa457d987 (see ``docs/methods/unipt.md``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from peft_core.layer import PETL_ATTR
from peft_core.registry import register_method, register_preset
from peft_core.targeting import TargetError, candidate_names, find_targets
from peft_core.tuner import PlannedLayer, Tuner
from peft_core.tuners.unipt import presets
from peft_core.tuners.unipt.config import UniPTConfig
from peft_core.tuners.unipt.layer import FeatureSources, UniPTLayer

LAYER_LIST_NAMES = ("layer", "layers", "blocks", "resblocks")
"""Last name component of the block lists found by default (BERT/ViT ``encoder.layer``, CLIP/BART/torch ``layers``,
timm ViT ``blocks``, OpenAI CLIP ``resblocks``)."""

CNN_STAGES = ["layer1", "layer2", "layer3", "layer4"]
"""Default CNN pyramid: the ResNet / ResNeXt stages (timm, torchvision; also timm ``features_only``)."""


def _is_petl(name: str) -> bool:
    return f".{PETL_ATTR}." in f".{name}."


def _block_lists(model: nn.Module) -> list[str]:
    """Names of the outermost ``ModuleList`` / ``Sequential`` called ``layer(s)`` / ``blocks`` / ``resblocks``."""
    found = [
        name for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList | nn.Sequential) and name.rsplit(".", 1)[-1] in LAYER_LIST_NAMES
        and not _is_petl(name) and len(module) > 0
    ]
    return [n for n in found if not any(n != o and (n.startswith(o + ".") or not o) for o in found)]


def default_layer_modules(model: nn.Module, config: UniPTConfig) -> list[str]:
    """Feature modules when ``layer_modules`` is ``None``: the ResNet stages for a CNN pyramid, else the blocks of
    the model's single encoder block list. Raises :class:`TargetError` when there is none or several."""
    if config.input_kind == "cnn_pyramid":
        return [n for n, _ in find_targets(model, CNN_STAGES, what="unipt default layer_modules (ResNet stages)")]
    lists = _block_lists(model)
    if len(lists) != 1:
        found = f"found {lists}" if lists else "found none"
        raise TargetError(
            f"unipt: cannot choose the feature layers: expected one block list named {list(LAYER_LIST_NAMES)}, "
            f"{found}; set layer_modules (regex or suffix list), e.g. r'encoder\\.layer\\.\\d+'"
        )
    prefix = lists[0]
    return [f"{prefix}.{child}" for child in model.get_submodule(prefix)._modules]


def find_module(model: nn.Module, name: str, field: str) -> str:
    """``name`` itself if it is a module of ``model``, else the one module whose name ends with ``.name``."""
    try:
        model.get_submodule(name)
        return name
    except AttributeError:
        pass
    matches = [n for n, _ in model.named_modules() if n.endswith("." + name) and not _is_petl(n)]
    if len(matches) == 1:
        return matches[0]
    what = f"matches several modules {matches[:6]}" if matches else "matches no module"
    raise TargetError(f"unipt: {field}={name!r} {what}; candidates: {candidate_names(model, [name])}")


def resolve_sources(model: nn.Module, config: UniPTConfig) -> FeatureSources:
    """Check ``config`` against ``model`` and return the module names the layer hooks (model untouched)."""
    if config.cross_context:
        raise TargetError(
            "unipt: cross_context=True (MDETR decoder side) needs the encoder side's memory as context, which a "
            "single adapter on one model cannot receive; use UniPTSide directly (docs/methods/unipt.md)"
        )
    if config.layer_modules is None:
        layers = default_layer_modules(model, config)
    else:
        found = find_targets(model, config.layer_modules, what="unipt layer_modules")
        layers = [n for n, _ in found if not _is_petl(n)]
    include = config.include_input if config.include_input is not None else config.input_kind == "tokens"
    count = len(layers) + int(include)
    if count != len(config.hidden_sizes):
        shown = layers if len(layers) <= 4 else [*layers[:2], "...", layers[-1]]
        raise TargetError(
            f"unipt: {len(layers)} layer modules {shown}" + (" plus the input of the first" if include else "")
            + f" give {count} features, but hidden_sizes has {len(config.hidden_sizes)} entries; set hidden_sizes, "
            "layer_modules or include_input"
        )
    anchor = None
    if config.anchor == "token":
        if config.anchor_module is None:
            raise TargetError(
                "unipt: anchor='token' needs anchor_module (the module whose output is the raw anchor token, e.g. "
                "'visual_projection' of a CLIP model)"
            )
        anchor = find_module(model, config.anchor_module, "anchor_module")
    output = "" if config.output_module is None else find_module(model, config.output_module, "output_module")
    return FeatureSources(tuple(layers), include, anchor, output)


class UniPTTuner(Tuner):
    """UniPT: a single host, the model root; the layer hooks the feature modules itself."""

    config_cls = UniPTConfig

    def plan(self, model: nn.Module, config: UniPTConfig) -> list[PlannedLayer]:
        sources = resolve_sources(model, config)
        return [PlannedLayer("", model, lambda: UniPTLayer(config, sources))]


register_method(UniPTTuner())

_REF = "Paranioar/UniPT @ 3fa457d987"


@register_preset("unipt-vse-text", "UniPT on BERT-base's 13 hidden states, d=512, embed 1024 (VSE-infty text)",
                 f"{_REF} VSE-infty/lib/adapter_for_transformer.py")
def unipt_vse_text(**kw: Any) -> UniPTConfig:
    return presets.vse_text(**kw)


@register_preset("unipt-vse-image",
                 "UniPT on ResNeXt-101 32x8d layer1..4 (256/512/1024/2048), d=512, embed 1024, 512 px (VSE-infty)",
                 f"{_REF} VSE-infty/lib/adapter_for_cnn.py")
def unipt_vse_image(**kw: Any) -> UniPTConfig:
    return presets.vse_image(**kw)


@register_preset("unipt-clip4clip-visual", "UniPT on CLIP ViT-B/32 visual tower, anchor = projected CLS (CLIP4Clip)",
                 f"{_REF} CLIP4Clip/modules/module_adapter.py")
def unipt_clip4clip_visual(**kw: Any) -> UniPTConfig:
    return presets.clip4clip_visual(**kw)


@register_preset("unipt-clip4clip-text", "UniPT on CLIP text tower (width 512), anchor = projected EOT (CLIP4Clip)",
                 f"{_REF} CLIP4Clip/modules/module_adapter.py")
def unipt_clip4clip_text(**kw: Any) -> UniPTConfig:
    return presets.clip4clip_text(**kw)


@register_preset("unipt-clipvil", "UniPT on a 12-layer single-stream BERT, d=384, output -> pooler (CLIP-ViL)",
                 f"{_REF} CLIP-ViL/src/lxrt/modeling.py:LXRTEncoder")
def unipt_clipvil(**kw: Any) -> UniPTConfig:
    return presets.clipvil(**kw)


@register_preset("unipt-mdetr-encoder", "UniPT encoder side of MDETR (d_model 256, layers 1/3/5, output d=128)",
                 f"{_REF} MDETR/models/transformer.py")
def unipt_mdetr_encoder(**kw: Any) -> UniPTConfig:
    return presets.mdetr_encoder(**kw)


@register_preset("unipt-mdetr-decoder", "UniPT decoder side of MDETR with crossers (side network only, UniPTSide)",
                 f"{_REF} MDETR/models/transformer.py")
def unipt_mdetr_decoder(**kw: Any) -> UniPTConfig:
    return presets.mdetr_decoder(**kw)
