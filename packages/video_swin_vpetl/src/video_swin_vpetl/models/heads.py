"""Classification heads on the Video Swin feature map ``(B, F, D, H, W)``.

* :class:`VPetlHead` (V-PETL): ``avg_pool3d(kernel=(2, H, W), stride=1) -> Conv3d(F, K, 1) -> mean over time``.
  At 8 x 224 x 224 the map is ``(B, 1024, 4, 7, 7)``: kernel ``(2, 7, 7)``, 3 temporal outputs, as upstream
  (bruceyo/V-PETL@661198dd38:models/video_swin_transformer_patt.py:SwinTransformer3D, head after ``norm``).
  The spatial kernel is the whole map (== upstream's 7 x 7 at 224 px), so other input sizes work too.
* :class:`I3DHead` (official Video Swin checkpoints): ``global avg pool -> dropout -> Linear(F, K)``
  (mmaction ``I3DHead``, keys ``cls_head.fc_cls.*``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class VPetlHead(nn.Module):
    """``logits = mean_t Conv3d_1x1(avgpool_{(kt, H, W), stride 1}(x))_t`` with ``kt = min(2, D)``."""

    def __init__(self, in_features: int, num_classes: int, temporal_kernel: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        self.temporal_kernel = temporal_kernel
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Conv3d(in_features, num_classes, kernel_size=1)
        nn.init.trunc_normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, d, h, w = x.shape
        x = F.avg_pool3d(x, kernel_size=(min(self.temporal_kernel, d), h, w), stride=1)
        x = self.fc(self.dropout(x))  # (B, K, D - kt + 1, 1, 1)
        return x.mean(dim=(2, 3, 4))


class I3DHead(nn.Module):
    """``logits = fc_cls(dropout(mean_{t,h,w} x))`` (mmaction I3DHead, dropout 0.5 in the Video Swin configs)."""

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc_cls = nn.Linear(in_features, num_classes)
        nn.init.normal_(self.fc_cls.weight, std=0.01)
        nn.init.zeros_(self.fc_cls.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_cls(self.dropout(x.mean(dim=(2, 3, 4))))


HEADS = {"vpetl": VPetlHead, "i3d": I3DHead}


def make_head(kind: str, in_features: int, num_classes: int, dropout: float | None = None) -> nn.Module:
    """A head by name (``vpetl`` or ``i3d``); ``dropout`` None keeps the head's default."""
    if kind not in HEADS:
        raise ValueError(f"head={kind!r} is not allowed; expected one of {sorted(HEADS)}")
    kwargs = {} if dropout is None else {"dropout": dropout}
    return HEADS[kind](in_features, num_classes, **kwargs)
