"""Image towers: a timm CNN stage pyramid with fc + GPO (grid features), or fc + MLP + GPO on precomputed regions.

Upstream (woodfrog/vse_infty@c9943b2:lib/encoders.py, Paranioar/UniPT@3fa457d987:VSE-infty/lib/encoders.py):

* ``EncoderImageFull`` (``--precomp_enc_type backbone``): ``ResnetFeatureExtractor`` returns the ResNeXt layer4 grid
  ``(B, H4*W4, 2048)`` and the four stage maps; training drops grids at random (:mod:`vse_infty.model.ops`); then
  ``EncoderImageAggr``: ``fc`` (Xavier-uniform, zero bias) -> GPO -> l2norm. With UniPT the side network's output
  ``(B, H4*W4, 1024)`` replaces the grid and there is no ``fc`` (``image_encoder = GPO(32, 32)``).
* ``EncoderImageAggr`` (``--precomp_enc_type basic``, precomputed regions): ``fc(x) + MLP(x)`` -> GPO -> l2norm, the
  MLP being ``Linear(D, E/2) BN ReLU Linear(E/2, E)`` over the flattened ``B*K`` rows (``lib/modules/mlp.py:MLP``).

Here the CNN is any timm ``features_only`` model (default ``resnext101_32x8d``, the torch.hub WSL architecture), so a
UniPT side network reads its last four feature levels through peft_core's forward hooks. The backbone's BatchNorm
layers stay in eval mode while training (``freeze_bn``, upstream ``ResnetFeatureExtractor.train``). Upstream UniPT
l2-normalises the image embedding even with ``--no_imgnorm``; here ``no_imgnorm`` applies to both paths (the same at
the default ``False``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from peft_core.layer import PETL_ATTR
from torch import Tensor, nn
from torch.nn import functional as F

from vse_infty.model.gpo import GPO
from vse_infty.model.ops import drop_features, flat_featuremap, l2norm

DEFAULT_OUT_INDICES = (-4, -3, -2, -1)
"""The last four feature levels (strides 4, 8, 16, 32 for ResNets and EfficientNets)."""


def _in_petl(name: str) -> bool:
    return PETL_ATTR in name.split(".")


def create_cnn(name: str, kwargs: dict[str, Any] | None = None, out_indices: Sequence[int] | None = None) -> nn.Module:
    """A randomly initialised timm ``features_only`` CNN returning its stage maps (a list, shallow to deep)."""
    import timm

    indices = tuple(out_indices) if out_indices is not None else DEFAULT_OUT_INDICES
    try:
        return timm.create_model(name, pretrained=False, features_only=True, out_indices=indices, **(kwargs or {}))
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise ValueError(f"model.backbone={name!r} is not a timm model name (timm.list_models() lists them)") \
                from None
        raise
    except (TypeError, IndexError, AssertionError) as exc:
        raise ValueError(f"model.backbone={name!r} with backbone_kwargs={kwargs} and out_indices={list(indices)} "
                         f"cannot be built as a timm features_only model: {exc}") from None


def create_reference_cnn(name: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """The full timm architecture (with its classifier) on the meta device: key names and shapes only."""
    import timm

    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, **(kwargs or {}))


def feature_module_names(backbone: nn.Module) -> list[str]:
    """Dotted names (inside ``backbone``) of the modules whose outputs are the returned feature maps.

    timm's ``FeatureListNet`` flattens nested names (``stages.0`` -> ``stages_0``); ``EfficientNetFeatures`` keeps
    them (``blocks.1``); ResNets use ``layer1`` .. ``layer4`` either way.
    """
    info = getattr(backbone, "feature_info", None)
    if info is None:
        raise ValueError(f"{type(backbone).__name__} has no feature_info; expected a timm features_only model")
    modules = dict(backbone.named_modules())
    names = []
    for name in info.module_name():
        for candidate in (name, name.replace(".", "_")):
            if candidate in modules:
                names.append(candidate)
                break
        else:
            raise ValueError(f"feature module {name!r} of {type(backbone).__name__} not found among its modules")
    return names


class ImageEncoder(nn.Module):
    """Grid-feature image tower: ``forward(images (B, 3, H, W)) -> (B, E)``.

    ``side_output=True``: a peft_core side network (UniPT) replaces the backbone's output with ``(B, K, E)`` grid
    features, so there is no ``fc``; otherwise the last stage map ``(B, C, H, W)`` is flattened and projected by
    ``fc``. Training: grids dropped at ``drop_rate``; then GPO and l2 normalisation (unless ``no_imgnorm``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        embed_size: int,
        gpo_dim: int = 32,
        *,
        side_output: bool = False,
        drop_rate: float = 0.2,
        drop_mode: str = "unipt",
        no_imgnorm: bool = False,
        freeze_bn: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.channels: list[int] = list(backbone.feature_info.channels())
        self.reductions: list[int] = list(backbone.feature_info.reduction())
        self.layer_names = feature_module_names(backbone)
        self.embed_size = embed_size
        self.side_output = side_output
        self.drop_rate = drop_rate
        self.drop_mode = drop_mode
        self.no_imgnorm = no_imgnorm
        self.freeze_bn = freeze_bn
        self.fc = None if side_output else nn.Linear(self.channels[-1], embed_size)
        if self.fc is not None:
            init_xavier_fc(self.fc)
        self.gpool = GPO(gpo_dim, gpo_dim)

    @property
    def max_reduction(self) -> int:
        return max(self.reductions)

    def grid_sizes(self, input_size: int) -> list[int]:
        """Side of each feature map for a square input (``input_size`` must be a multiple of the largest stride)."""
        if input_size % self.max_reduction:
            raise ValueError(f"input_size={input_size} is not a multiple of the backbone's largest stride "
                             f"{self.max_reduction}; the stage maps would not align (e.g. use "
                             f"{(input_size // self.max_reduction + 1) * self.max_reduction})")
        return [input_size // r for r in self.reductions]

    def grid_features(self, images: Tensor) -> Tensor:
        """``(B, K, C)`` grid features: the side network's output, or the flattened last stage map."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
        out = self.backbone(images)
        if self.side_output:
            if not isinstance(out, Tensor) or out.dim() != 3:
                raise RuntimeError("ImageEncoder(side_output=True) expects the backbone output to be replaced by a "
                                   "side network's (B, K, E) features; no UniPT adapter is attached")
            return out
        return flat_featuremap(out[-1])

    def forward(self, images: Tensor) -> Tensor:
        features = self.grid_features(images)
        if self.training and self.drop_rate > 0:
            features, lengths = drop_features(features, self.drop_rate, self.drop_mode)
        else:
            lengths = torch.full((features.shape[0],), features.shape[1], dtype=torch.long, device=features.device)
        if self.fc is not None:
            features = self.fc(features)
        pooled, _ = self.gpool(features, lengths)
        return pooled if self.no_imgnorm else l2norm(pooled, dim=-1)

    def backbone_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The CNN's own parameters (peft_core method parameters excluded), in registration order."""
        return [(n, p) for n, p in self.backbone.named_parameters() if not _in_petl(n)]

    def set_fixed_blocks(self, fixed_blocks: int | None) -> None:
        """Upstream ``freeze_backbone`` (``None``: nothing trains) / ``unfreeze_backbone(fixed_blocks)``: the stem and
        the first ``fixed_blocks`` feature stages stay frozen, the rest trains (0 = the whole CNN)."""
        params = self.backbone_named_parameters()
        if fixed_blocks is None:
            for _, p in params:
                p.requires_grad_(False)
            return
        if not 0 <= fixed_blocks < len(self.layer_names):
            raise ValueError(f"fixed_blocks={fixed_blocks} is not allowed; expected 0..{len(self.layer_names) - 1}")
        boundary = 0
        if fixed_blocks:
            stage = self.layer_names[fixed_blocks - 1] + "."
            boundary = max(i for i, (n, _) in enumerate(params) if n.startswith(stage)) + 1
        for i, (_, p) in enumerate(params):
            p.requires_grad_(i >= boundary)

    def train(self, mode: bool = True) -> ImageEncoder:
        super().train(mode)
        if mode and self.freeze_bn:
            for name, module in self.backbone.named_modules():
                if "BatchNorm" in type(module).__name__ and not _in_petl(name):
                    module.eval()
        return self


def init_xavier_fc(fc: nn.Linear) -> None:
    """Upstream ``EncoderImageAggr.init_weights``: ``U(-r, r)``, ``r = sqrt(6 / (in + out))``, bias 0."""
    if fc.weight.is_meta:
        return
    r = np.sqrt(6.0) / np.sqrt(fc.in_features + fc.out_features)
    with torch.no_grad():
        fc.weight.uniform_(-r, r)
        fc.bias.zero_()


class MLP(nn.Module):
    """Upstream ``lib/modules/mlp.py:MLP``: ``num_layers`` Linears, BatchNorm1d + ReLU between them, on ``(B*K, D)``.

    Every layer owns a BatchNorm (the last one is unused, as upstream, so checkpoints load unchanged)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        self.output_dim = output_dim
        self.num_layers = num_layers
        dims = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip([input_dim, *dims], [*dims, output_dim]))
        self.bns = nn.ModuleList(nn.BatchNorm1d(k) for k in [*dims, output_dim])

    def forward(self, x: Tensor) -> Tensor:
        batch, length, dim = x.shape
        x = x.reshape(batch * length, dim)
        for i, (bn, layer) in enumerate(zip(self.bns, self.layers)):
            x = F.relu(bn(layer(x))) if i < self.num_layers - 1 else layer(x)
        return x.view(batch, length, self.output_dim)


class PrecompImageEncoder(nn.Module):
    """Precomputed-region image tower: ``forward(features (B, K, D), lengths (B,)) -> (B, E)``.

    ``precomp_enc_type="basic"``: ``fc(x) + MLP(x)``; ``"backbone"``: ``fc(x)``; then GPO and l2 normalisation.
    """

    def __init__(self, img_dim: int, embed_size: int, gpo_dim: int = 32, *, precomp_enc_type: str = "basic",
                 no_imgnorm: bool = False) -> None:
        super().__init__()
        self.img_dim = img_dim
        self.embed_size = embed_size
        self.no_imgnorm = no_imgnorm
        self.precomp_enc_type = precomp_enc_type
        self.fc = nn.Linear(img_dim, embed_size)
        self.mlp = MLP(img_dim, embed_size // 2, embed_size, 2) if precomp_enc_type == "basic" else None
        self.gpool = GPO(gpo_dim, gpo_dim)
        init_xavier_fc(self.fc)

    def forward(self, features: Tensor, lengths: Tensor) -> Tensor:
        if features.dim() != 3 or features.shape[-1] != self.img_dim:
            raise ValueError(f"precomputed features must be (B, K, {self.img_dim}) (model.img_dim), got shape "
                             f"{tuple(features.shape)}")
        out = self.fc(features)
        if self.mlp is not None:
            out = self.mlp(features) + out
        pooled, _ = self.gpool(out, lengths)
        return pooled if self.no_imgnorm else l2norm(pooled, dim=-1)

