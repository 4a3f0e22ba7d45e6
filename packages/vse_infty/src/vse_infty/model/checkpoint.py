"""Upstream VSE-infty / UniPT checkpoints into a :class:`~vse_infty.model.vse.VSEModel`, with a key report.

The CNN weight loaders live in :mod:`vse_infty.model.weights` (re-exported here).

Upstream checkpoints (``model.vse_checkpoint``; woodfrog/vse_infty@35035a0:train.py:save_checkpoint and
Paranioar/UniPT@3fa457d987:VSE-infty/train.py) are ``{'epoch', 'model': [img_enc.state_dict(),
txt_enc.state_dict()], 'best_rsum', 'opt', 'Eiters'}``, keys prefixed ``module.`` after ``make_data_parallel``:

===========================================  ===================================================================
upstream key                                 this model
===========================================  ===================================================================
img ``backbone.resnet.*``                    ``image_encoder.backbone.*`` (``resnet.fc.*`` ignored: classifier)
img ``backbone.base.{0,1,4,5,6}.*``          ``conv1`` / ``bn1`` / ``layer1..3`` (same tensors as ``resnet.*``)
img ``backbone.top.0.*``                     ``layer4`` (same tensors as ``resnet.layer4.*``)
img ``image_encoder.{fc,gpool}.*``           ``image_encoder.{fc,gpool}.*``
img ``image_encoder.{gru,linear}.*`` (UniPT) ``image_encoder.gpool.{gru,linear}.*`` (UniPT's image_encoder is a GPO)
img ``{fc,mlp,gpool}.*`` (precomp)           ``image_encoder.{fc,mlp,gpool}.*``
txt ``bert.*``                               ``text_encoder.backbone.*`` (``embeddings.position_ids`` ignored)
txt ``{linear,gpool}.*``                     ``text_encoder.{linear,gpool}.*``
``side_tuning_module.*`` (UniPT, both)       ``{image,text}_encoder.backbone.petl.default.side.*`` via
                                             ``peft_core.tuners.unipt.convert_upstream_state_dict(layout="our_tuning")``
===========================================  ===================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from peft_core import iter_layers
from peft_core.tuners.unipt import UniPTLayer, convert_upstream_state_dict
from torch import Tensor, nn

from vse_infty.model.loading import (
    NBT,
    CheckpointError,
    LoadReport,
    read_checkpoint,
    strip_prefix,
    tensor_kind,
    unwrap_state_dict,
)
from vse_infty.model.weights import (
    efficientnet_lite0_weights_path,
    load_backbone_weights,
    load_efficientnet_lite0_state,
    map_by_order,
)

__all__ = [
    "CheckpointError",
    "LoadReport",
    "efficientnet_lite0_weights_path",
    "load_backbone_weights",
    "load_efficientnet_lite0_state",
    "load_vse_checkpoint",
    "map_by_order",
    "map_upstream_state",
    "read_checkpoint",
    "split_upstream_checkpoint",
    "unwrap_state_dict",
]

IMAGE_RULES: tuple[tuple[str, str | None], ...] = (
    ("backbone.resnet.fc.", None),
    ("backbone.resnet.", "image_encoder.backbone."),
    ("image_encoder.fc.", "image_encoder.fc."),
    ("image_encoder.gpool.", "image_encoder.gpool."),
    ("image_encoder.gru.", "image_encoder.gpool.gru."),
    ("image_encoder.linear.", "image_encoder.gpool.linear."),
)
IMAGE_ALIASES: tuple[tuple[str, str], ...] = (
    ("backbone.base.0.", "image_encoder.backbone.conv1."),
    ("backbone.base.1.", "image_encoder.backbone.bn1."),
    ("backbone.base.4.", "image_encoder.backbone.layer1."),
    ("backbone.base.5.", "image_encoder.backbone.layer2."),
    ("backbone.base.6.", "image_encoder.backbone.layer3."),
    ("backbone.top.0.", "image_encoder.backbone.layer4."),
)
"""Upstream ``ResnetFeatureExtractor.base`` / ``top`` hold the same modules as ``resnet``: their keys are copies."""
PRECOMP_RULES: tuple[tuple[str, str | None], ...] = (
    ("fc.", "image_encoder.fc."),
    ("mlp.", "image_encoder.mlp."),
    ("gpool.", "image_encoder.gpool."),
)
TEXT_RULES: tuple[tuple[str, str | None], ...] = (
    ("bert.embeddings.position_ids", None),
    ("bert.", "text_encoder.backbone."),
    ("linear.", "text_encoder.linear."),
    ("gpool.", "text_encoder.gpool."),
)
SIDE_PREFIX = "side_tuning_module."


def split_upstream_checkpoint(obj: Any, path: str | Path) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``(img_enc state dict, txt_enc state dict)`` of an upstream checkpoint (``module.`` stripped)."""
    parts = obj.get("model") if isinstance(obj, Mapping) else obj
    if (not isinstance(parts, list | tuple) or len(parts) != 2
            or not all(isinstance(p, Mapping) for p in parts)):
        raise CheckpointError(f"{path}: expected an upstream VSE-infty checkpoint {{'model': [img_enc.state_dict(), "
                              f"txt_enc.state_dict()], 'epoch': ..., ...}}, got {type(obj).__name__}"
                              + (f" with keys {sorted(obj)[:8]}" if isinstance(obj, Mapping) else ""))
    return strip_prefix(dict(parts[0])), strip_prefix(dict(parts[1]))


def _unipt_layer(model: nn.Module, encoder: str) -> tuple[str, UniPTLayer] | None:
    backbone = getattr(getattr(model, encoder), "backbone", None)
    if backbone is None:
        return None
    for host_name, _, layer in iter_layers(backbone):
        if isinstance(layer, UniPTLayer):
            host = f"{host_name}." if host_name else ""
            prefix = f"{encoder}.backbone.{host}petl.{layer.adapter_name}.side."
            return prefix, layer
    return None


def _map_side(model: nn.Module, encoder: str, state: Mapping[str, Tensor], tower: str,
              out: dict[str, Tensor], report: LoadReport) -> None:
    keys = [k for k in state if k.startswith(SIDE_PREFIX)]
    if not keys:
        return
    found = _unipt_layer(model, encoder)
    if found is None:
        report.unexpected.extend(f"{tower}:{k}" for k in keys)
        return
    prefix, layer = found
    converted = convert_upstream_state_dict(state, layer.config, "our_tuning", prefix=SIDE_PREFIX)
    own = layer.side.state_dict()
    lookup = {id(v): k for k, v in state.items() if k.startswith(SIDE_PREFIX)}
    for key, value in converted.items():
        if key in own:
            out[prefix + key] = value
            report.mapped[prefix + key] = f"{tower}:{lookup.get(id(value), SIDE_PREFIX + '?')}"
    used = set(report.mapped.values())
    report.unexpected.extend(f"{tower}:{k}" for k in keys if f"{tower}:{k}" not in used)


def _map_rules(state: Mapping[str, Tensor], rules, aliases, own: Mapping[str, Tensor], tower: str,
               out: dict[str, Tensor], report: LoadReport) -> None:
    for key, value in state.items():
        if key.startswith(SIDE_PREFIX):
            continue
        tag = f"{tower}:{key}"
        rule = next(((src, dst) for src, dst in rules if key.startswith(src)), None)
        alias = next(((src, dst) for src, dst in aliases if key.startswith(src)), None)
        if rule is not None and rule[1] is None:
            report.ignored[tag] = "not part of this model (classifier / position-id buffer)"
            continue
        if rule is None and alias is None:
            report.unexpected.append(tag)
            continue
        src, dst = rule if rule is not None else alias
        target = dst + key[len(src):]
        if target not in own:
            report.unexpected.append(tag)
        elif rule is None and target in out:
            report.ignored[tag] = "copy of backbone.resnet.* (upstream base / top share its modules)"
        else:
            out[target] = value
            report.mapped[target] = tag


def map_upstream_state(model: nn.Module, img_state: Mapping[str, Tensor], txt_state: Mapping[str, Tensor],
                       source: str = "upstream") -> tuple[dict[str, Tensor], LoadReport]:
    """Translate upstream ``img_enc`` / ``txt_enc`` state dicts to ``model``'s keys (see the module table)."""
    report = LoadReport(source)
    own = model.state_dict()
    out: dict[str, Tensor] = {}
    upstream_grid = any(k.startswith("backbone.") for k in img_state)
    ours_grid = getattr(model, "image_source", "backbone") == "backbone"
    if img_state and upstream_grid != ours_grid:
        raise CheckpointError(f"{source}: the checkpoint's image encoder uses "
                              f"{'a CNN backbone' if upstream_grid else 'precomputed features'} but the model has "
                              f"model.image_source={getattr(model, 'image_source', '?')!r}")
    # resnet.* first so that base / top copies are recognised as duplicates
    ordered = dict(sorted(img_state.items(), key=lambda kv: not kv[0].startswith("backbone.resnet.")))
    if upstream_grid:
        _map_rules(ordered, IMAGE_RULES, IMAGE_ALIASES, own, "img", out, report)
    else:
        _map_rules(ordered, PRECOMP_RULES, (), own, "img", out, report)
    _map_side(model, "image_encoder", img_state, "img", out, report)
    _map_rules(txt_state, TEXT_RULES, (), own, "txt", out, report)
    _map_side(model, "text_encoder", txt_state, "txt", out, report)
    report.missing = [k for k in own if k not in out and tensor_kind(k) != NBT]
    return out, report


def load_vse_checkpoint(model: nn.Module, path: str | Path, *, allow_pickle: bool = False) -> LoadReport:
    """Load an upstream VSE-infty / UniPT checkpoint into a built :class:`~vse_infty.model.vse.VSEModel`.

    Keys are translated (module table), shapes checked, and the report lists what was mapped, what the model keeps
    from before (missing), and what the file has that the model does not use (unexpected / ignored). A shape
    mismatch raises :class:`CheckpointError` (nothing is loaded then).
    """
    img_state, txt_state = split_upstream_checkpoint(read_checkpoint(path, allow_pickle=allow_pickle), path)
    mapped, report = map_upstream_state(model, img_state, txt_state, source=str(path))
    if not mapped:
        raise CheckpointError(f"{path}: no key of the checkpoint maps to this model\n{report.summary()}")
    own = model.state_dict()
    report.mismatched = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in mapped.items()
                         if tuple(v.shape) != tuple(own[k].shape)]
    if report.mismatched:
        raise CheckpointError(f"{path} does not fit the model (wrong embed_size / backbone?):\n{report.summary()}")
    model.load_state_dict(mapped, strict=False)
    return report
