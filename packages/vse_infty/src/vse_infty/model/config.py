"""The ``model`` and ``method`` sections of the training configuration.

Defaults reproduce the UniPT recipe on VSE-infty (Paranioar/UniPT@3fa457d987:VSE-infty/train_{coco,f30k}_wsl.sh,
``arguments.py``; host woodfrog/vse_infty ``lib/encoders.py``): ResNeXt-101 32x8d (WSL weights from torch.hub) grid
features at 512 px (``--input_scale_factor 2.0``), BERT-base, joint embedding 1024, GPO(32, 32) pooling, random grid
dropping 0.2 while training, UniPT on both towers with ``d = 1024 / 2`` (``--{img,txt}_downsample_D_factor 2``).

No weights are downloaded: ``backbone_weights`` / ``text_encoder`` / ``vse_checkpoint`` name local files. Without them
the towers keep random weights (real architecture), which is what parameter counts and memory measurements need.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from peft_core.runtime.config import ConfigError

IMAGE_SOURCES = ("backbone", "precomp")
PRECOMP_ENC_TYPES = ("basic", "backbone")
PRETRAINED_SOURCES = ("wsl", "torchvision", "timm", "order")
DROP_MODES = ("unipt", "vse_infty")
METHODS = ("full-finetune", "frozen", "unipt", "lora", "adapter", "bitfit", "lst")
NO_METHOD = "none"
"""Value of ``method.text_preset`` / ``method.image_preset`` that leaves that tower frozen."""


def _positive_int(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{key}={value!r} is not allowed; expected an integer > 0")


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; expected one of {list(allowed)}")


@dataclass
class ModelConfig:
    """VSE-infty dual encoder (section ``model``).

    Attributes:
        image_source: ``"backbone"`` (raw images through a timm CNN, upstream ``--precomp_enc_type backbone``) or
            ``"precomp"`` (precomputed region features, e.g. 36 x 2048 bottom-up-attention boxes per image).
        backbone: timm model name of the CNN; any model that timm can build with ``features_only=True``.
        backbone_kwargs: extra ``timm.create_model`` arguments (tiny test networks: ``layers``, ``channels``...).
        backbone_out_indices: feature levels used as the pyramid; ``None`` = the last four (strides 4..32).
        backbone_weights: local state-dict file of the CNN (torch.hub WSL / torchvision / timm file), or ``None``.
        backbone_pretrained_source: key layout of ``backbone_weights``: ``wsl`` / ``torchvision`` / ``timm`` (names
            as timm's ResNet, classifier dropped) or ``order`` (tensors matched by position and shape, e.g. the
            ``_conv_stem.weight``-style EfficientNet-Lite0 file of the demo).
        input_size: square input side in pixels (upstream 512 = 256 x ``input_scale_factor`` 2.0); UniPT on the CNN
            needs a multiple of the backbone's largest stride (32).
        img_dim: width of precomputed features (``image_source="precomp"``; upstream ``--img_dim 2048``).
        precomp_enc_type: precomputed-feature head: ``basic`` = fc + 2-layer MLP (upstream default) or ``backbone`` =
            fc only.
        text_encoder: local transformers model directory (``config.json`` + weights), or ``None``.
        text_config: a transformers config dict (``model_type`` defaults to ``bert``) to build a randomly
            initialised text encoder when ``text_encoder`` is ``None``; both ``None`` = BERT-base (bert-base-uncased
            architecture, random weights).
        tokenizer: local tokenizer directory; ``None`` = ``text_encoder``'s directory.
        embed_size: joint embedding width (upstream 1024).
        gpo_dim: GPO positional-encoding and GRU width (upstream ``GPO(32, 32)``).
        drop_feature_rate: probability of dropping each grid feature while training (0 = off).
        drop_feature_mode: ``unipt`` (``lib/utils.py:random_drop_feature``: every grid dropped with the rate, at
            least one kept) or ``vse_infty`` (woodfrog ``EncoderImageFull.forward``: 20% of images keep every grid,
            the others drop with ``rate * u``, ``u ~ U(0, 1)``).
        no_imgnorm / no_txtnorm: skip the final l2 normalisation of the image / caption embedding.
        vse_checkpoint: an upstream VSE-infty / UniPT checkpoint (``checkpoint.pth`` / ``model_best.pth``) loaded
            after the method is applied (:func:`vse_infty.model.checkpoint.load_vse_checkpoint`).
        freeze_bn: keep the CNN backbone's BatchNorm layers in eval mode while training (upstream
            ``ResnetFeatureExtractor.train``); the side networks' own BatchNorms train.
    """

    image_source: str = "backbone"
    backbone: str = "resnext101_32x8d"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    backbone_out_indices: list[int] | None = None
    backbone_weights: str | None = None
    backbone_pretrained_source: str = "wsl"
    input_size: int = 512
    img_dim: int = 2048
    precomp_enc_type: str = "basic"
    text_encoder: str | None = None
    text_config: dict[str, Any] | None = None
    tokenizer: str | None = None
    embed_size: int = 1024
    gpo_dim: int = 32
    drop_feature_rate: float = 0.2
    drop_feature_mode: str = "unipt"
    no_imgnorm: bool = False
    no_txtnorm: bool = False
    vse_checkpoint: str | None = None
    freeze_bn: bool = True

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid ``model.*`` key."""
        _choice("model.image_source", self.image_source, IMAGE_SOURCES)
        _choice("model.precomp_enc_type", self.precomp_enc_type, PRECOMP_ENC_TYPES)
        _choice("model.backbone_pretrained_source", self.backbone_pretrained_source, PRETRAINED_SOURCES)
        _choice("model.drop_feature_mode", self.drop_feature_mode, DROP_MODES)
        for key in ("input_size", "img_dim", "embed_size", "gpo_dim"):
            _positive_int(f"model.{key}", getattr(self, key))
        if self.gpo_dim % 2:
            raise ConfigError(f"model.gpo_dim={self.gpo_dim} is not allowed; expected an even number (sin/cos "
                              "positional encoding)")
        if not 0.0 <= self.drop_feature_rate < 1.0:
            raise ConfigError(f"model.drop_feature_rate={self.drop_feature_rate!r} is not allowed; expected a "
                              "probability in [0, 1)")
        if not self.backbone:
            raise ConfigError("model.backbone='' is not allowed; expected a timm model name")
        if self.backbone_out_indices is not None and (
            not self.backbone_out_indices or not all(isinstance(i, int) for i in self.backbone_out_indices)
        ):
            raise ConfigError(f"model.backbone_out_indices={self.backbone_out_indices!r} is not allowed; expected "
                              "null or a non-empty list of feature level indices")
        if self.text_encoder is not None and self.text_config is not None:
            raise ConfigError("model.text_encoder and model.text_config are both set; expected one of them (a local "
                              "model directory, or a config dict for a randomly initialised encoder)")


@dataclass
class MethodConfig:
    """How the towers are tuned (section ``method``); every method comes from peft_core.

    Attributes:
        name: ``full-finetune``, ``frozen``, ``unipt``, ``lora``, ``adapter``, ``bitfit`` or ``lst`` (the trainable
            set of each is listed in :mod:`vse_infty.model.methods`).
        text_preset / image_preset: peft_core preset (or method name) applied to that tower's backbone; ``None`` =
            the method's default (:data:`vse_infty.model.methods.DEFAULT_PRESETS`), ``"none"`` = that tower stays
            frozen. The image preset is ignored with precomputed features (no CNN).
        text_options / image_options: extra config fields for that tower (``make_config(preset, **options)``), e.g.
            ``{"r": 16, "alpha": 16}`` for LoRA or ``{"side_dim": 256}`` for UniPT.
        txt_downsample_factor / img_downsample_factor: UniPT side width ``d = embed_size // factor`` (upstream
            ``--txt_downsample_D_factor 2 --img_downsample_D_factor 2``).
    """

    name: str = "unipt"
    text_preset: str | None = None
    image_preset: str | None = None
    text_options: dict[str, Any] = field(default_factory=dict)
    image_options: dict[str, Any] = field(default_factory=dict)
    txt_downsample_factor: int = 2
    img_downsample_factor: int = 2

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid ``method.*`` key."""
        _choice("method.name", self.name, METHODS)
        _positive_int("method.txt_downsample_factor", self.txt_downsample_factor)
        _positive_int("method.img_downsample_factor", self.img_downsample_factor)
        if self.name in ("full-finetune", "frozen"):
            for key in ("text_preset", "image_preset", "text_options", "image_options"):
                if getattr(self, key):
                    raise ConfigError(f"method.{key} is set but method.name={self.name!r} adds no peft_core method; "
                                      "expected it empty")
        for key in ("text_preset", "image_preset"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"method.{key}={value!r} is not allowed; expected a peft_core preset name, "
                                  f"'{NO_METHOD}' or null")
