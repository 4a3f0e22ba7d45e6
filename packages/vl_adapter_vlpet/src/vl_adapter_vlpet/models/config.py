"""The ``model`` and ``method`` sections of a run configuration.

Defaults follow the upstream image-text scripts (HenryHZY/VL-PET@7430cad ``scripts/image-text/VL-PET-large.sh`` with
``src/param.py``): VL-BART on CLIP RN101 grid features (2048-d, 7 x 7 pooled to 6 x 6 = 36 visual tokens,
``--n_boxes 36 --downsample``), box size 4, 2 image orders, text length 20, beam search with 5 beams.

    model:
      backbone: bart-base            # or t5-base
      pretrained: /models/bart-base  # a local transformers checkpoint folder; null = random init from the config
      tokenizer: null                # a local tokenizer folder; null = the pretrained folder
    method:
      preset: vl-pet-large           # a name of vl_adapter_vlpet.methods.METHODS
      overrides: {r: 96}             # fields of the method's peft_core config

Invalid values raise :class:`ConfigError` naming ``section.key`` and what is allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from peft_core.runtime.config import ConfigError

BACKBONES = ("bart-base", "t5-base")
"""Backbones VL-PET and VL-Adapter report (paper Table 2): VL-BART (``facebook/bart-base``) and VL-T5 (``t5-base``)."""


@dataclass
class ModelConfig:
    """``model`` section.

    Attributes:
        backbone: ``bart-base`` (VL-BART) or ``t5-base`` (VL-T5).
        pretrained: a local transformers checkpoint folder (``config.json`` + weights) of that backbone; ``None``
            builds the backbone from its configuration with random weights (tests, parameter counts, memory).
        config_overrides: transformers config fields replacing the backbone's (e.g. tiny sizes in tests).
        feat_dim / pos_dim / n_images: visual feature size, box size, number of image orders (NLVR2 has 2).
        n_vis_tokens: visual tokens per image after pooling (36 = 6 x 6). downsample: adaptive max pooling of the
            7 x 7 grid to ``sqrt(n_vis_tokens)`` squared (upstream ``--downsample``).
        tokenizer: a local tokenizer folder; ``None`` uses ``pretrained`` (and no tokenizer without either).
        upstream_checkpoint: an upstream VL-PET / VL-Adapter ``LAST.pth`` loaded after the method is applied
            (:mod:`vl_adapter_vlpet.models.checkpoint`).
        freeze_vis_emb: keep the visual embedding frozen (upstream ``--freeze_vis_emb``; trained by default).
        max_text_length: input text tokens (upstream ``--max_text_length``). gen_max_length: generated tokens
            (``--gen_max_length``). num_beams: beam size for generation (``--num_beams``, 5 in every script).
    """

    backbone: str = "bart-base"
    pretrained: str | None = None
    config_overrides: dict = field(default_factory=dict)
    feat_dim: int = 2048
    pos_dim: int = 4
    n_images: int = 2
    n_vis_tokens: int = 36
    downsample: bool = True
    tokenizer: str | None = None
    upstream_checkpoint: str | None = None
    freeze_vis_emb: bool = False
    max_text_length: int = 20
    gen_max_length: int = 20
    num_beams: int = 5

    def __post_init__(self) -> None:
        self.validate()

    @property
    def family(self) -> str:
        """``bart`` or ``t5``."""
        return self.backbone.split("-")[0]

    def validate(self) -> None:
        if self.backbone not in BACKBONES:
            raise ConfigError(f"model.backbone={self.backbone!r} is not allowed; expected one of {list(BACKBONES)}")
        for key in ("feat_dim", "pos_dim", "n_images", "n_vis_tokens", "max_text_length", "gen_max_length",
                    "num_beams"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"model.{key}={value!r} is not allowed; expected an integer > 0")
        if self.downsample and math.isqrt(self.n_vis_tokens) ** 2 != self.n_vis_tokens:
            raise ConfigError(f"model.n_vis_tokens={self.n_vis_tokens!r} is not allowed with model.downsample=true; "
                              "expected a square number (the pooled grid is sqrt(n) x sqrt(n), e.g. 36 = 6 x 6)")
        if not isinstance(self.config_overrides, dict):
            raise ConfigError(f"model.config_overrides={self.config_overrides!r} is not allowed; expected a mapping "
                              "of transformers config fields")
        if "model_type" in self.config_overrides:
            raise ConfigError("model.config_overrides.model_type is not allowed; the backbone sets the model type")

    @property
    def pool_size(self) -> int:
        """Side of the pooled grid (6 for 36 tokens)."""
        return math.isqrt(self.n_vis_tokens)


@dataclass
class MethodConfig:
    """``method`` section.

    Attributes:
        preset: a method of :data:`vl_adapter_vlpet.methods.METHODS` (``vl-pet-large``, ``vl-adapter``, ``lora``,
            ``full-finetune``, ...); the backbone picks the upstream script's settings.
        overrides: fields of the method's main peft_core config (``{"r": 48}``); ``"<adapter>.<field>"`` keys
            reach a secondary adapter of the method (``{"bias.rule": ...}``).
        layer_norms: ``None`` keeps the method's norm training (upstream ``--unfreeze_layer_norms`` /
            ``--unfreeze_encoder_layer_norms``); ``True`` / ``False`` switches it on / off.
    """

    preset: str = "vl-pet-large"
    overrides: dict = field(default_factory=dict)
    layer_norms: bool | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        from vl_adapter_vlpet.methods import METHODS, NOT_AVAILABLE

        if self.preset in NOT_AVAILABLE:
            raise ConfigError(f"method.preset={self.preset!r} is not available: {NOT_AVAILABLE[self.preset]}")
        if self.preset not in METHODS:
            raise ConfigError(f"method.preset={self.preset!r} is not allowed; expected one of {sorted(METHODS)}")
        if not isinstance(self.overrides, dict) or not all(isinstance(k, str) for k in self.overrides):
            raise ConfigError(f"method.overrides={self.overrides!r} is not allowed; expected a mapping of config "
                              "field names to values")
