"""VSE-infty model: image / text towers, GPO, the VSE++ loss, tuning methods (from peft_core) and checkpoint loading.

    model = build_model(ModelConfig(), MethodConfig(name="unipt"), device="cuda")
    img_emb, cap_emb = model(batch)
    loss = ContrastiveLoss(margin=0.2, max_violation=True)(img_emb, cap_emb)
"""

from vse_infty.model.build import build_model, build_tokenizer
from vse_infty.model.checkpoint import (
    CheckpointError,
    LoadReport,
    efficientnet_lite0_weights_path,
    load_backbone_weights,
    load_efficientnet_lite0_state,
    load_vse_checkpoint,
)
from vse_infty.model.config import METHODS, MethodConfig, ModelConfig
from vse_infty.model.gpo import GPO, positional_encoding_1d
from vse_infty.model.image import ImageEncoder, PrecompImageEncoder
from vse_infty.model.loss import ContrastiveLoss, uses_max_violation, warmup_alpha
from vse_infty.model.methods import DEFAULT_PRESETS
from vse_infty.model.text import TextEncoder
from vse_infty.model.vse import VSEModel

__all__ = [
    "DEFAULT_PRESETS",
    "GPO",
    "METHODS",
    "CheckpointError",
    "ContrastiveLoss",
    "ImageEncoder",
    "LoadReport",
    "MethodConfig",
    "ModelConfig",
    "PrecompImageEncoder",
    "TextEncoder",
    "VSEModel",
    "build_model",
    "build_tokenizer",
    "efficientnet_lite0_weights_path",
    "load_backbone_weights",
    "load_efficientnet_lite0_state",
    "load_vse_checkpoint",
    "positional_encoding_1d",
    "uses_max_violation",
    "warmup_alpha",
]
