"""Tuning methods by configuration: method name -> one peft_core config per tower, and the trainable set.

Nothing here implements a method: each tower's backbone (the timm CNN, the transformers text encoder) gets
``peft_core.add_adapter(backbone, make_config(preset, **sizes, **options))`` and ``mark_trainable(backbone)``.

=============  ====================================  =================================  ============================
method         text tower (default preset)           image CNN (default preset)         trainable
=============  ====================================  =================================  ============================
full-finetune  none                                  none                               everything (but the unused
                                                                                        modules, see below)
frozen         none                                  none                               heads: text linear + GPO,
                                                                                        image fc (+ MLP) + GPO
unipt          ``unipt-vse-text``: 13 hidden         ``unipt-vse-image``: 4 stage maps  side networks + both GPOs
               states -> (B, L, E), replaces the     -> (B, H4*W4, E), replaces the     (no linear / fc, as
               encoder output                        feature list                       upstream)
lora           ``lora``: r=8 on query / value        LoRA r=8 on every plain            LoRA + heads
                                                     ungrouped Conv2d
adapter        ``houlsby`` (or ``pfeiffer``)         none (frozen)                      adapters + heads
bitfit         ``bitfit``: every bias                ``bitfit``: every bias (BN)        bias deltas + heads
lst            ``lst``: ladder side network, r=8     none (frozen)                      side network + heads
=============  ====================================  =================================  ============================

"heads" are the tower modules outside the backbones (``linear`` / ``fc`` / ``mlp`` / ``gpool``); they always train.
Never trainable: BERT's pooler and the precomputed-feature MLP's last BatchNorm, unused upstream too
(:func:`unused_modules`; BERT-base's pooler has 590,592 parameters).
Upstream UniPT (Paranioar/UniPT@3fa457d987:VSE-infty/lib/encoders.py) trains exactly ``side_tuning_module`` and the
GPO of each tower: the side output ``(B, L, 1024)`` / ``(B, 256, 1024)`` goes straight into GPO. The UniPT sizes follow
the built backbone: ``hidden_sizes`` = the text encoder's width x (layers + 1) or the CNN's feature channels,
``d = embed_size // {txt,img}_downsample_factor``; at VSE-infty size they equal the presets (5,921,281 / 6,433,537
side parameters). With precomputed region features there is no CNN: only the text tower gets a method.
``method.{text,image}_preset = "none"`` keeps that tower frozen; ``*_options`` override any config field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from peft_core import add_adapter, make_config, mark_trainable
from peft_core.config import PetlConfig
from peft_core.runtime.config import ConfigError
from torch import nn

from vse_infty.model.config import NO_METHOD, MethodConfig

ADAPTER_NAME = "default"
"""Adapter name on each tower's backbone (each backbone is its own peft_core root)."""

DEFAULT_PRESETS: dict[str, tuple[str | None, str | None]] = {
    "full-finetune": (None, None),
    "frozen": (None, None),
    "unipt": ("unipt-vse-text", "unipt-vse-image"),
    "lora": ("lora", "lora"),
    "adapter": ("houlsby", None),
    "bitfit": ("bitfit", "bitfit"),
    "lst": ("lst", None),
}
"""Method -> (text preset, image preset); ``None``: that tower gets no method (frozen)."""

PEFT_METHODS: dict[str, tuple[str, ...]] = {
    "unipt": ("unipt",),
    "lora": ("lora",),
    "adapter": ("bottleneck", "compacter"),
    "bitfit": ("bitfit",),
    "lst": ("lst",),
}
"""Method -> the peft_core method(s) a tower preset may resolve to."""


@dataclass(frozen=True)
class TowerMethod:
    """The peft_core config applied to one tower's backbone."""

    tower: str
    preset: str
    config: PetlConfig

    @property
    def side_output(self) -> bool:
        """UniPT replaces the backbone output with embed-size features (the tower then has no linear / fc)."""
        return self.config.method == "unipt"

    @property
    def label(self) -> str:
        return f"{self.tower}:{self.preset}"


def _preset(method_cfg: MethodConfig, tower: str) -> str | None:
    chosen = getattr(method_cfg, f"{tower}_preset")
    default = DEFAULT_PRESETS[method_cfg.name][0 if tower == "text" else 1]
    preset = default if chosen is None else chosen
    return None if preset in (None, NO_METHOD) else preset


def _make(method_cfg: MethodConfig, tower: str, preset: str, sizes: dict[str, Any]) -> TowerMethod:
    options = dict(getattr(method_cfg, f"{tower}_options"))
    key = f"method.{tower}_preset"
    try:
        kind = make_config(preset).method
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{key}={preset!r}: {exc}") from None
    allowed = PEFT_METHODS[method_cfg.name]
    if kind not in allowed:
        raise ConfigError(f"{key}={preset!r} is a peft_core {kind!r} config; method.name={method_cfg.name!r} "
                          f"expects a preset of {list(allowed)}")
    try:
        config = make_config(preset, **{**sizes, **options})
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{key}={preset!r} with method.{tower}_options={options}: {exc}") from None
    return TowerMethod(tower, preset, config)


def resolve_text_method(method_cfg: MethodConfig, backbone: nn.Module, embed_size: int) -> TowerMethod | None:
    """The text tower's config, or ``None`` (no method: frozen or fully fine-tuned)."""
    preset = _preset(method_cfg, "text")
    if preset is None:
        return None
    sizes: dict[str, Any] = {}
    if method_cfg.name == "unipt":
        layers = int(backbone.config.num_hidden_layers)
        sizes = dict(hidden_sizes=[int(backbone.config.hidden_size)] * (layers + 1), embed_size=embed_size,
                     downsample_factor=method_cfg.txt_downsample_factor)
    tower = _make(method_cfg, "text", preset, sizes)
    if tower.side_output and getattr(tower.config, "input_kind", None) != "tokens":
        raise ConfigError(f"method.text_preset={preset!r} is a UniPT CNN config; expected a token preset such as "
                          "'unipt-vse-text'")
    return tower


def conv_lora_targets(backbone: nn.Module) -> str:
    """Full-match regex of the CNN's plain, ungrouped ``nn.Conv2d`` layers (LoRA's Conv2d hosts; grouped and
    dynamically padded convolutions are left out)."""
    names = [re.escape(n) for n, m in backbone.named_modules()
             if type(m) is nn.Conv2d and m.groups == 1 and "petl" not in n.split(".")]
    if not names:
        raise ConfigError(f"method lora: the CNN {type(backbone).__name__} has no plain ungrouped Conv2d; set "
                          "method.image_preset='none'")
    return "|".join(names)


def resolve_image_method(method_cfg: MethodConfig, backbone: nn.Module | None, layer_names: list[str],
                         channels: list[int], embed_size: int) -> TowerMethod | None:
    """The CNN's config, or ``None`` (no CNN with precomputed features, or no method on the image tower)."""
    preset = _preset(method_cfg, "image")
    if preset is None or backbone is None:
        return None
    sizes: dict[str, Any] = {}
    if method_cfg.name == "unipt":
        sizes = dict(hidden_sizes=list(channels), embed_size=embed_size,
                     downsample_factor=method_cfg.img_downsample_factor,
                     layer_modules="|".join(re.escape(n) for n in layer_names), include_input=False)
    elif method_cfg.name == "lora":
        sizes = dict(target_modules=conv_lora_targets(backbone))
    tower = _make(method_cfg, "image", preset, sizes)
    if tower.side_output and getattr(tower.config, "input_kind", None) != "cnn_pyramid":
        raise ConfigError(f"method.image_preset={preset!r} is a UniPT token config; expected a CNN preset such as "
                          "'unipt-vse-image'")
    return tower


def apply_method(encoders: dict[str, nn.Module], towers: dict[str, TowerMethod | None], name: str) -> None:
    """Attach each tower's config to its encoder's ``backbone`` and set ``requires_grad`` (see the module table).

    ``encoders``: ``{"image": image encoder, "text": text encoder}``, each with a ``backbone`` child.
    """
    for tower_name, encoder in encoders.items():
        tower = towers.get(tower_name)
        backbone = getattr(encoder, "backbone", None)
        if tower is not None:
            add_adapter(backbone, tower.config, ADAPTER_NAME)
        if name == "full-finetune":
            encoder.requires_grad_(True)
            continue
        for module_name, child in encoder.named_children():
            child.requires_grad_(module_name != "backbone")
        if tower is not None:
            mark_trainable(backbone)
    for module in unused_modules(encoders):
        module.requires_grad_(False)


def unused_modules(encoders: dict[str, nn.Module]) -> list[nn.Module]:
    """Modules whose outputs never reach the embeddings (upstream has them too and they get no gradient there):
    the text encoder's pooler (only ``last_hidden_state`` is used) and the precomputed-feature MLP's last BatchNorm
    (``lib/modules/mlp.py`` builds one per layer, applies it between layers only). They stay frozen, which changes
    nothing in training and lets DDP run without ``find_unused_parameters``."""
    found = []
    pooler = getattr(getattr(encoders.get("text"), "backbone", None), "pooler", None)
    if isinstance(pooler, nn.Module):
        found.append(pooler)
    mlp = getattr(encoders.get("image"), "mlp", None)
    if mlp is not None:
        found.append(mlp.bns[-1])
    return found
