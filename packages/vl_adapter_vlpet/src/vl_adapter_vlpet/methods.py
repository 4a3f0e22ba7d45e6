"""The methods of VL-PET's Table 2 / Table 9 on VL-BART and VL-T5, each one or two peft_core configs.

Nothing here implements a layer: a method is a list of peft_core presets (``make_config`` + ``add_adapter``) plus the
parameters the upstream script trains besides them, set with ``mark_trainable`` / ``modules_to_save``. The BART rows
follow HenryHZY/VL-PET@7430cad ``scripts/image-text/*.sh`` (batch 500); the T5 baselines of Table 2 come from the LST
paper and follow ylsung/Ladder-Side-Tuning ``VL-T5/scripts/image/*.sh`` (batch 300), the T5 VL-PET rows
``scripts/image-text/T5-VL-PET-*.sh``. Trainable sets are upstream ``trainer_base.py:unfreeze_parameters``.

==================  ==========================================  =========================================  ==========
method              peft_core (adapter name: preset)            also trained                               Table 2 %
==================  ==========================================  =========================================  ==========
full-finetune       (none)                                      everything (``--unfreeze_language_model``)  100 / 100
bitfit              bias: bitfit (every existing bias; T5: a    visual embedding                           1.21/0.83
                    new bias on every Linear and T5LayerNorm,
                    ``--use_bitfit``)
prompt-tuning       prompt: prompt-vl-adapter (40, mid 800)     visual embedding                           2.00/1.26
lora                lora: lora-vl-adapter (q, v; r 128 / T5     visual embedding; BART: every bias         5.93/7.54
                    r 150, alpha 32) [+ bias: bitfit (BART)]    (``targets = ["lora", "bias"]``)
vl-adapter          adapter: vl-adapter (reduction 8 / T5 4)    every LayerNorm, visual embedding          4.18/7.98
compacter           adapter: compacter (n 2, reduction 8)       every LayerNorm, visual embedding          2.70/ -
lst (T5)            lst: lst-vl-t5 (side reduction 4)           visual embedding                            - /7.46
vl-pet-small        vlpet: vlpet-small-{bart,t5}                encoder norms (deltas), visual embedding   2.98/4.51
vl-pet-middlex      vlpet: vlpet-middlex-{bart,t5}              encoder norms (deltas), visual embedding   2.98/4.50
vl-pet-middley      vlpet: vlpet-middley-{bart,t5}              encoder norms (deltas), visual embedding   2.98/4.50
vl-pet-large        vlpet: vlpet-large-{bart,t5}                encoder norms (deltas), visual embedding   4.16/7.31
vl-adapter-glarge-  vlpet: vl-adapter-glarge-bart (Table 9)     encoder norms (deltas), visual embedding   4.16 (T9)
lw (BART)
compacter-glarge-   vlpet: compacter-glarge-bart (Table 9)      encoder norms (deltas), visual embedding   3.28 (T9)
lw (BART)
==================  ==========================================  =========================================  ==========

Hyperformer (Table 2, BART 5.79%) is not provided: peft_core has no hypernetwork that generates adapter weights from
task embeddings (:data:`NOT_AVAILABLE`).

Trainable percent convention (upstream ``TrainerBase.print_trainable_params_percentage``): trainable / all parameters
of the VL model, adapters and visual embedding included, tied weights once. peft_core trains biases and norms that a
method adds to the model's own tensors as zero-initialised deltas (BitFit, LoRA's biases, VL-PET's encoder norms);
they count in the total once more, which upstream (training in place) does not: :mod:`vl_adapter_vlpet.counts`
reports both. LayerNorms that a baseline trains whole (VL-Adapter, Compacter) are trained in place
(``modules_to_save``), as upstream.

Upstream behaviours kept or fixed (see ``counts.py`` for the numbers):

* ``--unfreeze_layer_norms`` on VL-T5 has no effect upstream: ``trainer_base.py`` tests ``isinstance(m,
  transformers...T5LayerNorm)`` while the model uses the ``T5LayerNorm`` class of its copied ``my_transformers``; the
  T5 VL-Adapter therefore trained no norm (7.98%). Fixed here (the norms train as the script asks, 8.00%);
  ``method.layer_norms=false`` reproduces upstream.
* LST's ``--use_bitfit`` gives every T5 Linear (``lm_head`` included) and every ``T5LayerNorm`` a bias; so does
  peft_core's BitFit with ``add_missing`` (0.83%, Table 2's value).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from peft_core import add_adapter, make_config, mark_trainable
from peft_core.layer import PETL_ATTR
from torch import nn

VISUAL_EMBEDDING = "visual_embedding"
NORM_CLASSES = ("LayerNorm", "T5LayerNorm", "VisualRMSNorm")
VLPET_SCRIPTS = "HenryHZY/VL-PET@7430cad:scripts/image-text/"
LST_SCRIPTS = "ylsung/Ladder-Side-Tuning@c09bf67:VL-T5/scripts/image/"
VL_ADAPTER_SCRIPTS = "ylsung/VL_adapter@545fcbb:VL-T5/scripts/image/"


@dataclass(frozen=True)
class Component:
    """One peft_core adapter of a method.

    ``targets``: ``None`` = the preset's own targets; ``"biases"`` = every module with its own bias outside the
    visual embedding; ``"linears+norms"`` = every ``nn.Linear`` and ``T5LayerNorm`` outside the visual embedding (with
    ``add_missing``, a new bias where there is none).
    """

    adapter: str
    preset: str
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    targets: str | None = None


@dataclass(frozen=True)
class Recipe:
    """A method on one backbone: its adapters, what else trains, and the upstream script's settings.

    ``layer_norms``: ``none``; ``all`` = every LayerNorm / T5LayerNorm of the language model trained in place
    (``--unfreeze_layer_norms``); ``encoder`` = VL-PET's ``encoder_layer_norms`` (``--unfreeze_encoder_layer_norms``).
    ``table`` / ``percent``: the paper table and its Params % (``None`` when the paper has no row).
    ``generation_cache``: whether ``generate`` may use the KV cache (LST's side decoder keeps none).
    """

    components: tuple[Component, ...]
    script: str
    flags: str
    lr: float
    batch_size: int
    trains: str
    task_prompts: bool = True
    weight_decay: float = 0.01
    layer_norms: str = "none"
    table: str = "Table 2"
    percent: float | None = None
    generation_cache: bool = True


@dataclass(frozen=True)
class MethodSpec:
    """A method: its name, its recipe per backbone, and its name in shared/baselines/vl_pet.toml."""

    name: str
    description: str
    recipes: Mapping[str, Recipe]
    full: bool = False
    baseline: str | None = None

    @property
    def baseline_name(self) -> str:
        """The method name of the published rows (``vl_pet.toml``) this method is compared with."""
        return self.baseline or self.name

    def recipe(self, backbone: str) -> Recipe:
        try:
            return self.recipes[backbone]
        except KeyError:
            raise ValueError(f"method {self.name!r} is not available for backbone {backbone!r}; it is defined for "
                             f"{sorted(self.recipes)}") from None


@dataclass
class AppliedMethod:
    """What :func:`apply_method` did: the method, its recipe, the adapter names and whether norms are trained."""

    name: str
    backbone: str
    recipe: Recipe
    adapters: list[str]
    layer_norms: bool
    freeze_vis_emb: bool

    @property
    def full(self) -> bool:
        return not self.recipe.components


def _c(adapter: str, preset: str, targets: str | None = None, **options: Any) -> Component:
    return Component(adapter, preset, MappingProxyType(options), targets)


def _vlpet(granularity: str) -> dict[str, Recipe]:
    """VL-PET-{small,middleX,middleY,large}.sh (BART: r 96, N_h 4, r_g 96) and T5-VL-PET-*.sh (r 192, r_g 192,
    s 0.3, zero inits); the gate flag differs per granularity."""
    gate = {"small": "--use_encoder_adapter_gating_small_xy_cat",
            "middleX": "--use_encoder_adapter_gating_middle_xy_add",
            "middleY": "--use_encoder_adapter_gating_middle_ia3_add",
            "large": "--use_encoder_adapter_gating_large_x_lowrank --adapter_gating_down_dim {r}"}[granularity]
    common = ("--use_adapter --use_single_adapter --no_encoder_adapter --use_adapter_down_dim "
              "--use_encoder_adapter_down_multihead --adapter_down_dim {r} --encoder_adapter_multihead_num_head 4 "
              "{zero}{gate} --unfreeze_encoder_layer_norms --no_decoder_adapter "
              "--use_decoder_enc_attn_value_parallel_adapter_down_dim "
              "--decoder_enc_attn_value_parallel_adapter_down_dim 96")
    bart_flags = common.format(r=96, zero="", gate=gate.format(r=96))
    t5_flags = common.format(r=192, zero="--use_encoder_multihead_up_zero_init ", gate=gate.format(r=192)) + (
        " --use_encoder_gating_scaling --encoder_gating_scaling_factor 0.3 (gate zero-init flag) "
        "--use_decoder_enc_vpa_up_zero_init")
    bart_pct = {"small": 2.98, "middleX": 2.98, "middleY": 2.98, "large": 4.16}[granularity]
    t5_pct = {"small": 4.51, "middleX": 4.50, "middleY": 4.50, "large": 7.31}[granularity]
    trains = "VL-PET encoder modules + decoder VPA, encoder norms (deltas), visual embedding"
    lower = granularity.lower()
    return {
        "bart-base": Recipe((_c("vlpet", f"vlpet-{lower}-bart"),), f"{VLPET_SCRIPTS}VL-PET-{granularity}.sh",
                            bart_flags, 1e-3, 500, trains, layer_norms="encoder", percent=bart_pct),
        "t5-base": Recipe((_c("vlpet", f"vlpet-{lower}-t5"),), f"{VLPET_SCRIPTS}T5-VL-PET-{granularity}.sh",
                          t5_flags, 3e-4, 300, trains, layer_norms="encoder", percent=t5_pct),
    }


def _table9(preset: str, percent: float, kind: str) -> dict[str, Recipe]:
    return {"bart-base": Recipe(
        (_c("vlpet", preset),), "VL-PET paper Table 9 (no script released; settings as VL-PET-large.sh with the "
        f"{kind} of single_{'adapter' if kind == 'adapter' else 'compacter'}.sh)",
        "G_large (--use_encoder_adapter_gating_large_x_lowrank --adapter_gating_down_dim 96) + lightweight design "
        f"(encoder {kind}, decoder VPA 96) --unfreeze_encoder_layer_norms", 1e-3, 500,
        f"encoder {kind}s + G_large gates + decoder VPA, encoder norms, visual embedding", layer_norms="encoder",
        table="Table 9", percent=percent)}


METHODS: dict[str, MethodSpec] = {
    "full-finetune": MethodSpec("full-finetune", "full fine-tuning of the language model and visual embedding", {
        "bart-base": Recipe((), f"{VLPET_SCRIPTS}full_finetuning.sh", "--unfreeze_language_model", 1e-4, 500,
                            "everything", task_prompts=False, percent=100.0),
        "t5-base": Recipe((), f"{LST_SCRIPTS}full_finetuning.sh", "--unfreeze_language_model", 1e-4, 300,
                          "everything", percent=100.0),
    }, full=True),
    "bitfit": MethodSpec("bitfit", "BitFit: biases only", {
        "bart-base": Recipe((_c("bias", "bitfit", "biases", rule="custom"),), f"{VLPET_SCRIPTS}bitfit.sh",
                            "--unfreeze_bias", 1e-3, 500, "every bias, visual embedding", percent=1.21),
        "t5-base": Recipe((_c("bias", "bitfit", "linears+norms", rule="custom", add_missing=True),),
                          f"{LST_SCRIPTS}bitfit.sh", "--use_bitfit", 3e-3, 300,
                          "a new bias on every Linear (lm_head too) and T5LayerNorm, visual embedding",
                          percent=0.83),
    }),
    "prompt-tuning": MethodSpec("prompt-tuning", "input prompt tuning (40 prompts through an MLP, VL-Adapter)", {
        "bart-base": Recipe((_c("prompt", "prompt-vl-adapter"),), f"{VL_ADAPTER_SCRIPTS}single_prompt.sh",
                            "--encoder_prompt_len 40 --mid_dim 800 --use_single_prompt", 1e-3, 500,
                            "prompt MLP, visual embedding", percent=2.00),
        "t5-base": Recipe((_c("prompt", "prompt-vl-adapter"),), f"{LST_SCRIPTS}prompt_tuning.sh",
                          "--encoder_prompt_len 40 --mid_dim 800 --use_single_prompt", 3e-3, 300,
                          "prompt MLP, visual embedding", percent=1.26),
    }),
    "lora": MethodSpec("lora", "LoRA on the query and value projections of every attention", {
        "bart-base": Recipe((_c("lora", "lora-vl-adapter"), _c("bias", "bitfit", "biases", rule="custom")),
                            f"{VLPET_SCRIPTS}single_lora.sh", "--use_lora --lora_dim 128 --use_single_lora", 1e-3, 500,
                            "LoRA A/B, every bias, visual embedding", percent=5.93),
        "t5-base": Recipe((_c("lora", "lora-vl-adapter", r=150),), f"{LST_SCRIPTS}lora.sh",
                          "--use_lora --lora_dim 150 --use_single_lora", 3e-4, 300,
                          "LoRA A/B (T5 has no bias), visual embedding", percent=7.54),
    }),
    "vl-adapter": MethodSpec("vl-adapter", "VL-Adapter single adapter (serial, after attention and FFN)", {
        "bart-base": Recipe((_c("adapter", "vl-adapter"),), f"{VLPET_SCRIPTS}single_adapter.sh",
                            "--use_adapter --unfreeze_layer_norms --reduction_factor 8 --use_single_adapter",
                            1e-3, 500,
                            "adapters, every LayerNorm, visual embedding", layer_norms="all", percent=4.18),
        "t5-base": Recipe((_c("adapter", "vl-adapter", reduction_factor=4),), f"{LST_SCRIPTS}adapter.sh",
                          "--use_adapter --unfreeze_layer_norms --reduction_factor 4 --use_single_adapter", 3e-4, 300,
                          "adapters, every T5LayerNorm, visual embedding", layer_norms="all", percent=7.98),
    }),
    "compacter": MethodSpec("compacter", "Compacter (PHM adapters, n = 2) as VL-Adapter's single compacter", {
        "bart-base": Recipe((_c("adapter", "compacter"),), f"{VLPET_SCRIPTS}single_compacter.sh",
                            "--use_compacter --hypercomplex_division 2 --reduction_factor 8 --shared_phm_rule False "
                            "--factorized_phm False --unfreeze_layer_norms --use_single_adapter", 1e-3, 500,
                            "PHM adapters, every LayerNorm, visual embedding", layer_norms="all", percent=2.70),
        "t5-base": Recipe((_c("adapter", "compacter"),), f"{VL_ADAPTER_SCRIPTS}single_compacter.sh (model=t5)",
                          "--use_compacter --hypercomplex_division 2 --reduction_factor 8 --shared_phm_rule False "
                          "--factorized_phm False --unfreeze_layer_norms --use_single_adapter", 1e-3, 300,
                          "PHM adapters, every T5LayerNorm, visual embedding", layer_norms="all", table="-"),
    }),
    "lst": MethodSpec("lst", "Ladder Side-Tuning (side network, reduction 4, every layer)", {
        "t5-base": Recipe((_c("lst", "lst-vl-t5"),), f"{LST_SCRIPTS}LST.sh",
                          "--use_side_transformers --side_reduction_factor 4 --load_side_pretrained_weights fisher-v2",
                          3e-3, 300, "side network, visual embedding", weight_decay=3e-2, percent=7.46,
                          generation_cache=False),
    }),
    "vl-pet-small": MethodSpec("vl-pet-small", "VL-PET, small granularity (one gate per sequence)", _vlpet("small")),
    "vl-pet-middlex": MethodSpec("vl-pet-middlex", "VL-PET, middle-X granularity (one gate per token)",
                                 _vlpet("middleX")),
    "vl-pet-middley": MethodSpec("vl-pet-middley", "VL-PET, middle-Y granularity (one gate per channel)",
                                 _vlpet("middleY")),
    "vl-pet-large": MethodSpec("vl-pet-large", "VL-PET, large granularity (a gate per token and channel)",
                               _vlpet("large")),
    "vl-adapter-glarge-lw": MethodSpec("vl-adapter-glarge-lw", "VL-Adapter + G_large + lightweight design",
                                       _table9("vl-adapter-glarge-bart", 4.16, "adapter"),
                                       baseline="vl-adapter+g-large+lw"),
    "compacter-glarge-lw": MethodSpec("compacter-glarge-lw", "Compacter + G_large + lightweight design",
                                      _table9("compacter-glarge-bart", 3.28, "compacter"),
                                      baseline="compacter+g-large+lw"),
}

NOT_AVAILABLE: dict[str, str] = {
    "hyperformer": "Hyperformer (Table 2, BART 5.79%, scripts/image-text/hyperformer.sh) generates adapter weights "
                   "with a hypernetwork from task embeddings; peft_core has no such method, so it is not provided",
}


def method_names(backbone: str | None = None) -> list[str]:
    """Methods available for ``backbone`` (all if ``None``), in table order."""
    return [n for n, spec in METHODS.items() if backbone is None or backbone in spec.recipes]


# ----------------------------------------------------------------------------------------------- module selection
def _outside(name: str) -> bool:
    """A language-model module: not the visual embedding, not a peft_core layer."""
    return not (name == VISUAL_EMBEDDING or name.startswith(VISUAL_EMBEDDING + ".")
                or f".{PETL_ATTR}." in f".{name}.")


def bias_modules(model: nn.Module) -> list[str]:
    """Modules with their own bias parameter (Linear, LayerNorm) outside the visual embedding."""
    return [n for n, m in model.named_modules()
            if n and _outside(n) and isinstance(m._parameters.get("bias"), nn.Parameter)]


def linear_modules(model: nn.Module) -> list[str]:
    """Every ``nn.Linear`` outside the visual embedding (LST's ``--use_bitfit`` gives each a bias)."""
    return [n for n, m in model.named_modules() if n and _outside(n) and isinstance(m, nn.Linear)]


def norm_modules(model: nn.Module, encoder_only: bool = False) -> list[str]:
    """LayerNorm / T5LayerNorm modules of the language model (upstream ``--unfreeze_layer_norms``)."""
    out = []
    for n, m in model.named_modules():
        if (n and _outside(n) and type(m).__name__ in NORM_CLASSES
                and (not encoder_only or ".encoder." in f".{n}.")):
            out.append(n)
    return out


def exact(names: list[str]) -> str:
    """A regular expression matching exactly ``names`` (peft_core ``target_modules`` full-match semantics)."""
    if not names:
        raise ValueError("no module selected; expected at least one module name")
    return "|".join(re.escape(n) for n in names)


# ------------------------------------------------------------------------------------------------------ applying
def split_overrides(overrides: Mapping[str, Any], adapters: list[str]) -> dict[str, dict[str, Any]]:
    """``{"r": 8, "bias.rule": "all"}`` -> ``{main adapter: {"r": 8}, "bias": {"rule": "all"}}``."""
    out: dict[str, dict[str, Any]] = {a: {} for a in adapters}
    for key, value in overrides.items():
        target, sep, fld = key.partition(".")
        if not sep:
            target, fld = adapters[0], key
        if target not in out:
            raise ValueError(f"method.overrides key {key!r} names adapter {target!r}; this method's adapters are "
                             f"{adapters}")
        out[target][fld] = value
    return out


def apply_method(model: nn.Module, name: str, backbone: str, overrides: Mapping[str, Any] | None = None,
                 freeze_vis_emb: bool = False, layer_norms: bool | None = None) -> AppliedMethod:
    """Add method ``name``'s peft_core adapters to a VL model (:class:`peft_core.zoo_vl.VLSeq2Seq`) and set
    ``requires_grad`` as the upstream script trains (see the module docstring). Everything is validated before the
    first adapter is added."""
    if name not in METHODS:
        hint = f" ({NOT_AVAILABLE[name]})" if name in NOT_AVAILABLE else ""
        raise ValueError(f"method {name!r} is not known{hint}; expected one of {sorted(METHODS)}")
    recipe = METHODS[name].recipe(backbone)
    if not hasattr(model, VISUAL_EMBEDDING):
        raise ValueError(f"method {name!r} expects a VL model with a {VISUAL_EMBEDDING!r} "
                         "(peft_core.zoo_vl.VLSeq2Seq)")
    norms_on = (recipe.layer_norms != "none") if layer_norms is None else bool(layer_norms)
    if not recipe.components:
        if overrides:
            raise ValueError(f"method.overrides={dict(overrides)!r} is not allowed for full fine-tuning (no adapter)")
        for pname, p in model.named_parameters():
            p.requires_grad_(not (freeze_vis_emb and pname.startswith(VISUAL_EMBEDDING + ".")))
        return AppliedMethod(name, backbone, recipe, [], True, freeze_vis_emb)
    adapters = [c.adapter for c in recipe.components]
    per_adapter = split_overrides(overrides or {}, adapters)
    configs = []
    for i, comp in enumerate(recipe.components):
        kw: dict[str, Any] = dict(comp.options)
        if comp.targets == "biases":
            kw["target_modules"] = exact(bias_modules(model))
        elif comp.targets == "linears+norms":
            kw["target_modules"] = exact(linear_modules(model) + norm_modules(model))
        if i == 0:
            saved = [] if freeze_vis_emb else [VISUAL_EMBEDDING]
            if recipe.layer_norms == "encoder":
                kw["encoder_layer_norms"] = norms_on
            elif norms_on:
                saved += norm_modules(model)
            kw["modules_to_save"] = saved or None
        kw.update(per_adapter[comp.adapter])
        configs.append(make_config(comp.preset, **kw))
    for comp, config in zip(recipe.components, configs, strict=True):
        add_adapter(model, config, comp.adapter)
    mark_trainable(model)
    return AppliedMethod(name, backbone, recipe, adapters, norms_on, freeze_vis_emb)
