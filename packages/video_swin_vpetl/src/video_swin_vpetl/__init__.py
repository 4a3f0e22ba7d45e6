"""V-PETL on Video Swin: PATT, AdaptFormer, window prefix, LoRA and BitFit from peft_core, for video classification.

    from video_swin_vpetl import create_model, load_checkpoint, build_recipe, apply_recipe
    model = create_model("video-swin-b", num_classes=51, drop_path_rate=0.4)
    load_checkpoint(model, "swin_base_patch244_window877_kinetics400_22k.pth", load_head=False)
    apply_recipe(model, build_recipe("adaptformer-64+patt-kv-128"))   # the V-PETL README recipe

Importing the package registers ``video-swin-t/-s/-b`` in ``peft_core.zoo`` (``python -m peft_core params``).
"""

from video_swin_vpetl.methods import Recipe, apply_recipe, build_recipe, list_recipes
from video_swin_vpetl.models import (
    LoadReport,
    VideoSwinConfig,
    VideoSwinTransformer,
    WindowAttention3D,
    create_model,
    load_checkpoint,
    video_swin_b,
    video_swin_s,
    video_swin_t,
)
from video_swin_vpetl.models.zoo import register_zoo

__version__ = "0.1.0"

register_zoo()

__all__ = [
    "LoadReport",
    "Recipe",
    "VideoSwinConfig",
    "VideoSwinTransformer",
    "WindowAttention3D",
    "__version__",
    "apply_recipe",
    "build_recipe",
    "create_model",
    "list_recipes",
    "load_checkpoint",
    "video_swin_b",
    "video_swin_s",
    "video_swin_t",
]
