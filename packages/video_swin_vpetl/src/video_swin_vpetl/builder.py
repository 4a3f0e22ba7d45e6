"""Build the model of a run from its configuration: architecture, pre-trained weights, recipe.

Order: create the Video Swin, load the pre-trained checkpoint (backbone; the head only with ``model.load_head``),
then add the recipe's adapters (peft_core keeps parameter names, so the order could also be reversed) and set the
trainable parameters.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from peft_core.report import ParamReport
from torch import nn

from video_swin_vpetl.config import TrainConfig
from video_swin_vpetl.methods import Recipe, RecipeOptions, apply_recipe, build_recipe
from video_swin_vpetl.models import BACKBONE_NAMES, LoadReport, create_model, load_checkpoint

log = logging.getLogger("video_swin_vpetl")


@dataclass
class BuiltModel:
    model: nn.Module
    recipe: Recipe
    params: ParamReport
    load_report: LoadReport | None
    backbone_name: str


def recipe_from_config(config: TrainConfig) -> Recipe:
    m = config.method
    options = RecipeOptions(patt_scale=m.patt_scale, patt_init=m.patt_init, adapter_scale=m.adapter_scale,
                            adapter_init=m.adapter_init, prefix_reparam=m.prefix_reparam,
                            prefix_mid_dim=m.prefix_mid_dim, lora_alpha=m.lora_alpha)
    return build_recipe(m.recipe, options)


def backbone_name(config: TrainConfig) -> str:
    """Name used in run results (``video-swin-base`` for Swin-B; ``-custom`` suffix when the size is overridden)."""
    name = BACKBONE_NAMES.get(config.model.arch, config.model.arch)
    shape_keys = {"embed_dim", "depths", "num_heads", "patch_size", "window_size", "mlp_ratio"}
    return f"{name}-custom" if shape_keys & set(config.model.overrides) else name


def build_model(config: TrainConfig, num_classes: int, *, load_pretrained: bool = True) -> BuiltModel:
    """The configured model with its recipe applied (on the CPU; the caller moves it)."""
    mc = config.model
    model = create_model(mc.arch, num_classes=num_classes, head=mc.head, drop_path_rate=mc.drop_path_rate,
                         head_dropout=mc.head_dropout, use_checkpoint=mc.grad_checkpointing, **mc.overrides)
    report = None
    if load_pretrained and mc.pretrained:
        report = load_checkpoint(model, mc.pretrained, load_head=mc.load_head)
        log.info("pre-trained weights\n%s", report.table())
        if report.missing_backbone:
            log.warning("%d backbone parameters were not in %s and keep their random init: %s",
                        len(report.missing_backbone), mc.pretrained, report.missing_backbone[:6])
    elif load_pretrained:
        log.warning("model.pretrained is not set: the backbone starts from a random init")
    recipe = recipe_from_config(config)
    params = apply_recipe(model, recipe)
    return BuiltModel(model, recipe, params, report, backbone_name(config))
