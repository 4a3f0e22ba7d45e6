"""Compacter tuner: default placements per architecture, the shared-rule holder on the model root, presets."""

from __future__ import annotations

from torch import nn

from peft_core.archs import detect_family
from peft_core.registry import register_method, register_preset
from peft_core.targeting import TargetError, find_targets
from peft_core.tuner import PlannedLayer, Tuner
from peft_core.tuners.bottleneck.layer import feature_dim
from peft_core.tuners.compacter.config import CompacterConfig
from peft_core.tuners.compacter.layer import CompacterLayer, CompacterRuleLayer


class CompacterTuner(Tuner):
    config_cls = CompacterConfig

    def default_targets(self, model: nn.Module, config: CompacterConfig) -> tuple[list[str], None]:
        arch = detect_family(model)
        if config.placement == "pfeiffer":
            return arch.ffn_out, None
        return arch.attn_out + arch.ffn_out, None

    def resolve(self, model: nn.Module, config: CompacterConfig) -> list[tuple[str, nn.Module]]:
        """Default targets; for ``pfeiffer`` the FFN outputs minus the attention outputs (BERT's FFN suffix
        ``output.dense`` also matches ``attention.output.dense``)."""
        found = super().resolve(model, config)
        if config.placement != "pfeiffer" or config.target_modules is not None or config.target_types:
            return found
        attn = detect_family(model).attn_out
        if not attn:
            return found
        attention = {n for n, _ in find_targets(model, attn, what="compacter attention outputs")}
        kept = [(n, m) for n, m in found if n not in attention]
        if not kept:
            raise TargetError("compacter placement='pfeiffer': no FFN output left after removing attention outputs")
        return kept

    def check_host(self, name: str, module: nn.Module, config: CompacterConfig) -> None:
        try:
            dim = feature_dim(module, output=True)
        except ValueError as exc:
            raise TargetError(str(exc)) from None
        n, hidden = config.hypercomplex_division, config.hidden_size(dim)
        if dim % n or hidden % n:
            raise TargetError(
                f"hypercomplex_division={n} must divide the host width {dim} and the bottleneck size {hidden}"
            )

    def create_layer(self, name: str, module: nn.Module, config: CompacterConfig) -> CompacterLayer:
        return CompacterLayer(feature_dim(module, output=True), config)

    def plan(self, model: nn.Module, config: CompacterConfig) -> list[PlannedLayer]:
        """Per-host adapters; with ``shared_phm_rule`` a :class:`CompacterRuleLayer` on the root comes first and
        every adapter references its rule."""
        planned = super().plan(model, config)
        if not config.shared_phm_rule:
            return planned
        holder: dict[str, CompacterRuleLayer] = {}

        def rule_layer() -> CompacterRuleLayer:
            if "rule" not in holder:
                holder["rule"] = CompacterRuleLayer(config)
            return holder["rule"]

        def adapter(module: nn.Module) -> CompacterLayer:
            return CompacterLayer(feature_dim(module, output=True), config, rule_owner=rule_layer())

        return [PlannedLayer("", model, rule_layer),
                *[PlannedLayer(p.host_name, p.host, lambda m=p.host: adapter(m)) for p in planned]]


register_method(CompacterTuner())


@register_preset(
    "compacter",
    "Compacter as in VL-Adapter: n=2, reduction 8, own rule per layer, unfactorised B, gelu_new, after attention "
    "(self and cross) and FFN",
    "ylsung/VL_adapter VL-T5/scripts/image/single_compacter.sh (--hypercomplex_division 2 --reduction_factor 8 "
    "--shared_phm_rule False --factorized_phm False); vlpet.md BART-base 2.70%",
)
def compacter_vl_adapter(**kw: object) -> CompacterConfig:
    return CompacterConfig(**{"placement": "houlsby", "reduction_factor": 8, "hypercomplex_division": 2,
                              "shared_phm_rule": False, "factorized_phm": False, "phm_init_range": 0.01, **kw})


@register_preset(
    "compacter-paper",
    "Compacter (paper): n=4, reduction 32, shared rule, rank-1 factorised B, after attention and FFN",
    "rabeehk/compacter seq2seq/configs/compacter.json",
)
def compacter_paper(**kw: object) -> CompacterConfig:
    return CompacterConfig(**{"placement": "houlsby", "reduction_factor": 32, "hypercomplex_division": 4,
                              "shared_phm_rule": True, "factorized_phm": True, "phm_rank": 1,
                              "phm_init_range": 1e-4, **kw})


@register_preset(
    "compacter++",
    "Compacter++: as compacter-paper but only after the FFN",
    "rabeehk/compacter seq2seq/configs/compacter++.json (add_adapter_in_self_attention false)",
)
def compacter_plus_plus(**kw: object) -> CompacterConfig:
    return compacter_paper(**{"placement": "pfeiffer", **kw})
