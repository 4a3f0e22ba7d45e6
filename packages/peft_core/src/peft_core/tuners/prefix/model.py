"""Prefix tuning tuner: default targets (the model's attentions by kind), shared MLPs per stack, presets."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from torch import nn

from peft_core.attention import AttentionSite, describe_attention, site_of
from peft_core.layer import MethodLayer
from peft_core.model import adapter_records, iter_layers
from peft_core.registry import register_method, register_preset
from peft_core.targeting import TargetError, find_targets
from peft_core.tuner import PlannedLayer, Tuner
from peft_core.tuners.prefix.config import PrefixConfig
from peft_core.tuners.prefix.layer import PrefixLayer, PrefixMLP

CROSS_NAMES = frozenset({"encoder_attn", "EncDecAttention", "crossattention", "cross_attn", "cross_attention",
                         "multihead_attn"})
"""Module-name components that mark a cross-attention (BART, T5, BERT, torch ``nn.TransformerDecoderLayer``)."""


def attention_kind(name: str, module: nn.Module) -> str:
    """``cross``, ``decoder_self`` (causal, or inside a module path with ``decoder``) or ``encoder_self``."""
    parts = name.split(".") if name else []
    if any(p in CROSS_NAMES for p in parts) or "Cross" in type(module).__name__:
        return "cross"
    if any("decoder" in p for p in parts) or getattr(module, "is_causal", False) is True:
        return "decoder_self"
    return "encoder_self"


def _excluded(model: nn.Module, spec: str | Sequence[str] | None) -> set[str]:
    """Names matched by ``exclude_modules`` (the core's targeting semantics)."""
    if spec is None:
        return set()
    try:
        return {name for name, _ in find_targets(model, spec, what="prefix exclude_modules")}
    except TargetError:
        return set()


def default_prefix_targets(model: nn.Module, config: PrefixConfig) -> list[tuple[str, nn.Module]]:
    """Every supported attention of the kinds in ``config.attentions`` (model order)."""
    found, rejected = [], []
    excluded = _excluded(model, config.exclude_modules)
    for name, module in model.named_modules():
        try:
            describe_attention(module)
        except TargetError as exc:
            if isinstance(module, nn.MultiheadAttention) or "Attention" in type(module).__name__:
                rejected.append(f"{name or '(root)'} ({type(module).__name__}): {exc}")
            continue
        if attention_kind(name, module) in config.attentions and name not in excluded:
            found.append((name, module))
    if not found:
        raise TargetError(
            f"prefix: no supported attention of kinds {list(config.attentions)} found"
            + (f"; rejected: {rejected[:3]}" if rejected else "; give target_modules explicitly")
        )
    return found


def resolve_hidden_norm(model: nn.Module, host_name: str, norm_name: str) -> nn.Module:
    """The module ``norm_name`` in the host's parent, grand-parent, ... (nearest first)."""
    parts = host_name.split(".") if host_name else []
    for depth in range(len(parts) - 1, -1, -1):
        prefix = ".".join(parts[:depth])
        try:
            return model.get_submodule(f"{prefix}.{norm_name}" if prefix else norm_name)
        except AttributeError:
            continue
    raise TargetError(f"hidden_norm={norm_name!r}: no such module next to {host_name!r} or its ancestors")


def stack_key(name: str) -> str:
    """The name with its layer indices replaced by ``*`` (targets with equal keys share an MLP)."""
    return re.sub(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.|$)", "*", name)


class PrefixTuner(Tuner):
    """Prefix tuning: one :class:`PrefixLayer` per targeted attention (``K' = [P_k ; K]``, ``V' = [P_v ; V]``); with
    ``share_mlp`` one :class:`PrefixMLP` per stack of layers (OFA). Li & Liang 2021; pi-Tuning / OFA; Uni-Perceiver."""

    config_cls = PrefixConfig

    def plan(self, model: nn.Module, config: PrefixConfig) -> list[PlannedLayer]:
        if config.target_modules is not None or config.target_types:
            hosts = find_targets(model, config.target_modules, target_types=config.target_types,
                                 exclude_modules=config.exclude_modules, what="prefix")
        else:
            hosts = default_prefix_targets(model, config)
        entries: list[tuple[str, nn.Module, AttentionSite, nn.Module | None]] = []
        for name, module in hosts:
            try:
                site = describe_attention(module)
                if config.space == "hidden" and site.key_input_dim != site.value_input_dim:
                    raise TargetError(f"space='hidden' needs equal key and value input widths, got "
                                      f"{site.key_input_dim} and {site.value_input_dim}")
                norm = resolve_hidden_norm(model, name, config.hidden_norm) if config.hidden_norm else None
            except TargetError as exc:
                raise TargetError(f"prefix: module {name!r} ({type(module).__name__}): {exc}") from None
            entries.append((name, module, site, norm))

        stacks: dict[str, list[int]] = {}
        if config.share_mlp:
            for i, (name, _, _, _) in enumerate(entries):
                stacks.setdefault(stack_key(name), []).append(i)
            for key, members in stacks.items():
                shapes = {(entries[i][2].key_input_dim, entries[i][2].key_dim, entries[i][2].value_dim)
                          for i in members}
                if len(shapes) > 1:
                    raise TargetError(f"prefix: share_mlp needs equal widths within stack {key!r}, got {shapes}")
        position = {i: (key, members.index(i)) for key, members in stacks.items() for i in members}
        shared: dict[str, PrefixMLP] = {}

        def build(i: int) -> MethodLayer:
            _, _, site, norm = entries[i]
            if not config.share_mlp:
                return PrefixLayer(site, config, hidden_norm=norm)
            key, index = position[i]
            if key not in shared:
                width = site.key_dim + site.value_dim
                shared[key] = PrefixMLP(config.num_virtual_tokens, site.key_input_dim,
                                        config.mlp_width(site.key_input_dim), len(stacks[key]) * width,
                                        config.activation)
            return PrefixLayer(site, config, shared=shared[key], index=index, owns_shared=index == 0)

        return [PlannedLayer(name, module, _bind(build, i)) for i, (name, module, _, _) in enumerate(entries)]


def _bind(fn: Callable[[int], MethodLayer], i: int) -> Callable[[], MethodLayer]:
    return lambda: fn(i)


register_method(PrefixTuner())


def collapse_prefix_mlp(model: nn.Module, name: str = "default") -> PrefixConfig:
    """Fold adapter ``name``'s MLP reparameterisation into direct prefixes (the inference form, fewer parameters).

    Outputs are unchanged (the prefixes are what the MLPs produce now); the adapter's config becomes
    ``reparameterization="none"``, so a checkpoint saved afterwards loads as a direct prefix. Returns that config.
    """
    records = adapter_records(model)
    if name not in records:
        raise ValueError(f"adapter name={name!r} is not on this model; it has {list(records)}")
    config = records[name].config
    if not isinstance(config, PrefixConfig):
        raise ValueError(f"adapter {name!r} is a {config.method!r} adapter; expected a 'prefix' adapter")
    layers = [(host, layer) for _, host, layer in iter_layers(model, name)]
    for host, layer in layers:
        layer.collapse(site_of(host))
    new = config.replace(reparameterization="none", share_mlp=False)
    records[name].config = new
    return new


@register_preset("prefix-ofa", "Prefix tuning as pi-Tuning ran it on OFA: L=100 direct key/value prefixes (no "
                 "projection; 2 L d per layer, 2.46M per side for OFA-Large), dropout 0.2, self-attention only",
                 "TencentARC/pi-Tuning OFA/run_scripts/refcoco/train_refcoco_prefix.sh, "
                 "OFA/models/ofa/unify_transformer.py (pituning.md)")
def prefix_ofa(**kw: object) -> PrefixConfig:
    return PrefixConfig(**{"num_virtual_tokens": 100, "reparameterization": "none", "dropout": 0.2,
                           "attentions": ["encoder_self", "decoder_self"], **kw})


@register_preset("prefix-ofa-projection", "OFA prefix with --encoder/decoder-prompt-projection: L=100, one MLP per "
                 "stack Embedding(L, d) -> Linear(d, 2d) -> ReLU -> Linear(2d, layers * 2d), dropout 0.2, "
                 "self-attention only", "TencentARC/pi-Tuning OFA/models/ofa/unify_transformer.py:PromptEncoder "
                 "(pituning.md)")
def prefix_ofa_projection(**kw: object) -> PrefixConfig:
    return PrefixConfig(**{"num_virtual_tokens": 100, "reparameterization": "mlp", "proj_factor": 2.0,
                           "activation": "relu", "share_mlp": True, "dropout": 0.2,
                           "attentions": ["encoder_self", "decoder_self"], **kw})


@register_preset("deep-prompt-uniperceiver", "Uni-Perceiver deep prompts: 10 hidden-space tokens per layer joined "
                 "to keys and values only, normalised by the layer's norm1 (pre-LN), no MLP",
                 "fundamentalvision/Uni-Perceiver uniperceiver/modeling/layers/transformer_encoder_layer.py "
                 "(uniperceiver_lst.md)")
def deep_prompt_uniperceiver(**kw: object) -> PrefixConfig:
    return PrefixConfig(**{"num_virtual_tokens": 10, "space": "hidden", "reparameterization": "none",
                           "hidden_norm": "norm1", "attentions": ["encoder_self"], **kw})
