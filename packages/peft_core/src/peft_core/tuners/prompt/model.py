"""Input prompt tuning tuner: finds the module that embeds ``input_ids`` (and the decoder of an encoder-decoder)."""

from __future__ import annotations

import inspect

from torch import nn

from peft_core.registry import register_method, register_preset
from peft_core.targeting import TargetError, find_targets
from peft_core.tuner import PlannedLayer, Tuner
from peft_core.tuners.prompt.config import PromptConfig
from peft_core.tuners.prompt.layer import PromptCrossMaskLayer, PromptLayer

POSITION_MODULES = ("embed_positions", "embeddings.position_embeddings")
"""Absolute position embeddings of a prompt host (BART encoders; BERT / RoBERTa base models)."""

REQUIRED_ARGS = ("input_ids", "inputs_embeds", "attention_mask")


def _name_of(model: nn.Module, module: nn.Module) -> str:
    for name, candidate in model.named_modules():
        if candidate is module:
            return name
    raise TargetError(f"{type(module).__name__} is not a submodule of the model")


def position_module(host: nn.Module) -> nn.Module | None:
    """The host's absolute position embedding, if it has one of :data:`POSITION_MODULES`."""
    for path in POSITION_MODULES:
        try:
            return host.get_submodule(path)
        except AttributeError:
            continue
    return None


def check_prompt_host(module: nn.Module, config: PromptConfig) -> nn.Module | None:
    """Raise :class:`TargetError` unless ``module`` can take input prompts; return its position module for
    ``positions="none"`` (``None`` when there is nothing to hook)."""
    params = inspect.signature(module.forward).parameters
    missing = [a for a in REQUIRED_ARGS if a not in params]
    if missing:
        raise TargetError(f"forward has no {missing} argument(s); prompt tuning needs a text encoder whose forward "
                          f"takes {list(REQUIRED_ARGS)} (e.g. BartEncoder, T5 encoder, BertModel)")
    get_embeddings = getattr(module, "get_input_embeddings", None)
    try:
        embed = get_embeddings() if get_embeddings is not None else None
    except (NotImplementedError, AttributeError):
        embed = None
    if not isinstance(getattr(embed, "weight", None), nn.Parameter):
        raise TargetError("get_input_embeddings() gives no embedding module with a weight")
    config_obj = getattr(module, "config", None)
    if getattr(config_obj, "is_decoder", False) is True:
        raise TargetError("the module is a decoder (config.is_decoder); prompt tuning prepends to encoder inputs")
    if config.positions != "none":
        return None
    found = position_module(module)
    if found is None and getattr(config_obj, "relative_attention_num_buckets", None) is None:
        raise TargetError(f"positions='none' needs an absolute position embedding at one of {list(POSITION_MODULES)} "
                          "(or a model with relative positions only, like T5)")
    return found


class PromptTuner(Tuner):
    """Input prompt tuning: ``[P ; E(x)]`` into the text encoder, ``[1_L ; mask]`` for its mask and the decoder's
    cross-attention mask. Lester et al. 2021; VL-Adapter ``InputPrompts``."""

    config_cls = PromptConfig

    def plan(self, model: nn.Module, config: PromptConfig) -> list[PlannedLayer]:
        model_config = getattr(model, "config", None)
        encoder_decoder = bool(getattr(model_config, "is_encoder_decoder", False))
        encoder = model.get_encoder() if encoder_decoder else None
        if config.target_modules is not None or config.target_types:
            hosts = find_targets(model, config.target_modules, target_types=config.target_types,
                                 exclude_modules=config.exclude_modules, what="prompt")
        elif encoder is not None:
            hosts = [(_name_of(model, encoder), encoder)]
        else:
            base = getattr(model, "base_model", model)
            hosts = [(_name_of(model, base), base)]
        planned: list[PlannedLayer] = []
        for name, module in hosts:
            try:
                positions = check_prompt_host(module, config)
            except TargetError as exc:
                raise TargetError(f"prompt: module {name!r} ({type(module).__name__}): {exc}") from None
            cell: dict[str, PromptLayer] = {}

            def build(module: nn.Module = module, positions: nn.Module | None = positions,
                      cell: dict[str, PromptLayer] = cell) -> PromptLayer:
                cell["layer"] = PromptLayer(module, config, positions)
                return cell["layer"]

            planned.append(PlannedLayer(name, module, build))
            if encoder is not None and module is encoder:
                decoder = model.get_decoder()

                def build_mask(decoder: nn.Module = decoder, cell: dict[str, PromptLayer] = cell
                               ) -> PromptCrossMaskLayer:
                    return PromptCrossMaskLayer(decoder, cell["layer"])

                planned.append(PlannedLayer(_name_of(model, decoder), decoder, build_mask))
        return planned


register_method(PromptTuner())


@register_preset("prompt-vl-adapter", "VL-Adapter input prompt tuning: 40 prompts, Embedding -> Linear(d, 800) -> "
                 "tanh -> Linear(800, d), prepended after the position embeddings",
                 "ylsung/VL_adapter prompt/prompt_modeling.py:InputPrompts (vlpet.md)")
def prompt_vl_adapter(**kw: object) -> PromptConfig:
    return PromptConfig(**{"num_virtual_tokens": 40, "reparameterization": "mlp", "mlp_dim": 800,
                           "activation": "tanh", "positions": "none", **kw})
