"""Register the Video Swin architectures in ``peft_core.zoo`` (done when ``video_swin_vpetl`` is imported).

    video-swin-vpetl params --model video-swin-b --method patt-kv-m128      # this package's CLI imports the zoo
    python -c "import video_swin_vpetl, sys; from peft_core.cli import main; sys.exit(main(sys.argv[1:]))" \\
        params --model video-swin-b --method adaptformer-64

The registered models carry the official I3D head with 400 classes (the K400 checkpoints' architecture); the counts
of a method alone do not depend on the head.
"""

from __future__ import annotations

from functools import partial

from video_swin_vpetl.models.video_swin import create_model

ZOO = {
    "video-swin-t": "Video Swin-T (embed 96, depths 2-2-6-2, patch 2x4x4, window 8x7x7), I3D head, 400 classes",
    "video-swin-s": "Video Swin-S (embed 96, depths 2-2-18-2, patch 2x4x4, window 8x7x7), I3D head, 400 classes",
    "video-swin-b": "Video Swin-B (embed 128, depths 2-2-18-2, patch 2x4x4, window 8x7x7), I3D head, 400 classes",
}


def register_zoo() -> None:
    """Add every :data:`ZOO` architecture to ``peft_core.zoo.MODELS`` (idempotent)."""
    from peft_core.zoo import register_model

    for name, description in ZOO.items():
        register_model(name, partial(create_model, name, head="i3d", num_classes=400), description)
