"""Video Swin Transformer, heads and checkpoint loading."""

from video_swin_vpetl.models.checkpoint import CheckpointLoadError, LoadReport, load_checkpoint
from video_swin_vpetl.models.heads import I3DHead, VPetlHead
from video_swin_vpetl.models.video_swin import (
    ARCHS,
    BACKBONE_NAMES,
    VideoSwinConfig,
    VideoSwinTransformer,
    WindowAttention3D,
    create_model,
    video_swin_b,
    video_swin_s,
    video_swin_t,
)

__all__ = [
    "ARCHS",
    "BACKBONE_NAMES",
    "CheckpointLoadError",
    "I3DHead",
    "LoadReport",
    "VPetlHead",
    "VideoSwinConfig",
    "VideoSwinTransformer",
    "WindowAttention3D",
    "create_model",
    "load_checkpoint",
    "video_swin_b",
    "video_swin_s",
    "video_swin_t",
]
