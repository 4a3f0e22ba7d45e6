"""Build a :class:`~vse_infty.model.vse.VSEModel` from the ``model`` and ``method`` config sections.

Order: the CNN (timm ``features_only``) and its local weights; the text encoder (local directory, config dict or
BERT-base); the tuning method resolved per tower (:mod:`vse_infty.model.methods`), which decides the heads (no
``fc`` / ``linear`` behind a UniPT side network); the method attached through peft_core and the trainable set
marked; then the upstream VSE-infty checkpoint, if any (its UniPT side keys need the side networks to exist). The
load reports are kept in ``model.load_reports`` and logged.

``device="meta"`` builds shapes only (real-size parameter counts without memory): no weight file is read.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from peft_core.runtime.config import ConfigError

from vse_infty.model.checkpoint import load_backbone_weights, load_vse_checkpoint
from vse_infty.model.config import MethodConfig, ModelConfig
from vse_infty.model.image import (
    ImageEncoder,
    PrecompImageEncoder,
    create_cnn,
    create_reference_cnn,
    feature_module_names,
)
from vse_infty.model.methods import apply_method, resolve_image_method, resolve_text_method
from vse_infty.model.text import TextEncoder, build_text_backbone
from vse_infty.model.vse import VSEModel

logger = logging.getLogger(__name__)


def _image_tower(cfg: ModelConfig, method_cfg: MethodConfig, meta: bool, reports: list):
    if cfg.image_source == "precomp":
        encoder = PrecompImageEncoder(cfg.img_dim, cfg.embed_size, cfg.gpo_dim,
                                      precomp_enc_type=cfg.precomp_enc_type, no_imgnorm=cfg.no_imgnorm)
        return encoder, None
    backbone = create_cnn(cfg.backbone, cfg.backbone_kwargs, cfg.backbone_out_indices)
    if cfg.backbone_weights is not None and not meta:
        report = load_backbone_weights(backbone, cfg.backbone_weights, cfg.backbone_pretrained_source,
                                       create_reference_cnn(cfg.backbone, cfg.backbone_kwargs))
        reports.append(report)
    channels, stride = list(backbone.feature_info.channels()), max(backbone.feature_info.reduction())
    tower = resolve_image_method(method_cfg, backbone, feature_module_names(backbone), channels, cfg.embed_size)
    if tower is not None and tower.side_output and cfg.input_size % stride:
        raise ConfigError(f"model.input_size={cfg.input_size} is not a multiple of {stride} (the "
                          f"largest stride of {cfg.backbone}); UniPT's CNN side network needs aligned stage maps")
    encoder = ImageEncoder(backbone, cfg.embed_size, cfg.gpo_dim, side_output=bool(tower and tower.side_output),
                           drop_rate=cfg.drop_feature_rate, drop_mode=cfg.drop_feature_mode,
                           no_imgnorm=cfg.no_imgnorm, freeze_bn=cfg.freeze_bn)
    return encoder, tower


def build_model(model_cfg: ModelConfig, method_cfg: MethodConfig, device: str | torch.device = "cpu") -> VSEModel:
    """The VSE-infty model with ``method_cfg`` applied through peft_core and the trainable parameters marked."""
    model_cfg.validate()
    method_cfg.validate()
    device = torch.device(device)
    meta = device.type == "meta"
    if meta and (model_cfg.backbone_weights or model_cfg.vse_checkpoint):
        logger.info("device=meta: backbone_weights / vse_checkpoint are not read (shapes only)")
    reports: list = []
    with torch.device("meta") if meta else contextlib.nullcontext():
        image_encoder, image_tower = _image_tower(model_cfg, method_cfg, meta, reports)
        text_backbone = build_text_backbone(model_cfg.text_encoder, model_cfg.text_config, load_weights=not meta)
        text_tower = resolve_text_method(method_cfg, text_backbone, model_cfg.embed_size)
        text_encoder = TextEncoder(text_backbone, model_cfg.embed_size, model_cfg.gpo_dim,
                                   side_output=bool(text_tower and text_tower.side_output),
                                   no_txtnorm=model_cfg.no_txtnorm)
        model = VSEModel(image_encoder, text_encoder, model_cfg, method_cfg)
        towers = {"image": image_tower, "text": text_tower}
        apply_method(model.encoders(), towers, method_cfg.name)
        model.tower_methods = {k: (v.preset if v is not None else None) for k, v in towers.items()}
    if model_cfg.vse_checkpoint is not None and not meta:
        reports.append(load_vse_checkpoint(model, model_cfg.vse_checkpoint))
    for report in reports:
        logger.info("%s", report.summary())
    model.load_reports = reports
    if not meta:
        model.to(device)
    return model


def build_tokenizer(model_cfg: ModelConfig):
    """The tokenizer of the text tower: ``model.tokenizer``, else the ``model.text_encoder`` directory."""
    from transformers import AutoTokenizer

    path = model_cfg.tokenizer or model_cfg.text_encoder
    if path is None:
        raise ConfigError("model.tokenizer is not set and model.text_encoder is null; a text encoder built from a "
                          "config needs a local tokenizer directory (e.g. a bert-base-uncased download)")
    key = "model.tokenizer" if model_cfg.tokenizer else "model.text_encoder"
    if not Path(path).is_dir():
        raise ConfigError(f"{key}={str(path)!r} is not a directory; expected a local tokenizer directory "
                          "(tokenizer.json or vocab.txt + tokenizer_config.json)")
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{key}={str(path)!r}: cannot load a tokenizer from it ({exc})") from None
