"""Conditional MoE tuner: default expert placement per architecture, layer selection, gate groups, presets."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from peft_core.archs import detect_family
from peft_core.layer import PETL_ATTR
from peft_core.registry import register_method, register_preset
from peft_core.targeting import TargetError, find_targets, get_parent
from peft_core.tuner import PlannedLayer, Tuner
from peft_core.tuners.moe.config import MoeConfig
from peft_core.tuners.moe.layer import GateGroup, MoeLayer


@dataclass(frozen=True)
class MoeSpec:
    """Where the experts go in one architecture family (full-match regexes on module names).

    ``layer``: searched in the host name, group 1 = layer index, the match up to that index = the block module.
    ``attn``: attention projections (q/k/v or fused qkv, output); ``ffn_in`` / ``ffn_out``: the FFN Linears.
    """

    layer: str
    attn: str | None
    ffn_in: str
    ffn_out: str


_HF_BERT_FFN = dict(ffn_in=r"(?:.*\.)?intermediate\.dense", ffn_out=r"(?:.*\.)?layer\.\d+\.output\.dense")
_TIMM = MoeSpec(r"\bblocks\.(\d+)\.", r"(?:.*\.)?attn\.(qkv|proj)", r"(?:.*\.)?mlp\.fc1", r"(?:.*\.)?mlp\.fc2")

SPECS: dict[str, MoeSpec] = {
    "bert": MoeSpec(r"\blayer\.(\d+)\.",
                    r"(?:.*\.)?attention\.self\.(query|key|value)|(?:.*\.)?attention\.output\.dense", **_HF_BERT_FFN),
    "vit": MoeSpec(r"\blayers?\.(\d+)\.",
                   r"(?:.*\.)?attention\.(?:attention\.)?(query|key|value|q_proj|k_proj|v_proj|o_proj)"
                   r"|(?:.*\.)?attention\.output\.dense",
                   r"(?:.*\.)?(?:intermediate\.dense|mlp\.fc1)", r"(?:.*\.)?(?:layers?\.\d+\.output\.dense|mlp\.fc2)"),
    "bart": MoeSpec(r"\blayers\.(\d+)\.", r"(?:.*\.)?self_attn\.(q_proj|k_proj|v_proj|out_proj)", r"(?:.*\.)?fc1",
                    r"(?:.*\.)?fc2"),
    "clip": MoeSpec(r"\blayers\.(\d+)\.", r"(?:.*\.)?self_attn\.(q_proj|k_proj|v_proj|out_proj)", r"(?:.*\.)?mlp\.fc1",
                    r"(?:.*\.)?mlp\.fc2"),
    "t5": MoeSpec(r"\bblock\.(\d+)\.", r"(?:.*\.)?SelfAttention\.(q|k|v|o)", r"(?:.*\.)?DenseReluDense\.wi(_0|_1)?",
                  r"(?:.*\.)?DenseReluDense\.wo"),
    "timm_vit": _TIMM,
    "swin": _TIMM,
    # nn.MultiheadAttention reads its weights inside F.multi_head_attention_forward: no Linear forward to replace
    "torch": MoeSpec(r"\blayers\.(\d+)\.", None, r"(?:.*\.)?linear1", r"(?:.*\.)?linear2"),
}
DEFAULT_LAYER_REGEX = r"(?:^|\.)(\d+)\."


def family_spec(model: nn.Module) -> MoeSpec | None:
    try:
        return SPECS.get(detect_family(model).family)
    except TargetError:
        return None


def layer_index(name: str, regex: str) -> tuple[int, str] | None:
    """``(layer index, block module name)`` read from a host name, or None."""
    m = re.search(regex, name)
    if m is None:
        return None
    block = name[: m.end(1)]
    return int(m.group(1)), block


def _keep_layer(index: int, layers: str | list[int]) -> bool:
    if layers == "all":
        return True
    if layers == "odd":
        return index % 2 == 0
    if layers == "four":
        return index % 4 == 0
    return index in layers


class MoeTuner(Tuner):
    config_cls = MoeConfig

    def check_host(self, name: str, module: nn.Module, config: MoeConfig) -> None:
        if not isinstance(module, nn.Linear):
            raise TargetError("MoE replaces nn.Linear layers; expected an nn.Linear host")
        host_dict = module._modules.get(PETL_ATTR)
        if isinstance(host_dict, nn.ModuleDict) and any(isinstance(m, MoeLayer) for m in host_dict.values()):
            raise TargetError("this Linear already carries an MoE adapter; expected at most one per host")

    def _targets(self, model: nn.Module, config: MoeConfig, spec: MoeSpec | None) -> list[tuple[str, nn.Module]]:
        if config.target_modules is not None or config.target_types:
            return self.resolve(model, config)
        if spec is None:
            raise TargetError("moe: cannot infer the expert placement for this model (unknown architecture); give "
                              "target_modules")
        patterns = []
        if "SA" in config.expert_types:
            if spec.attn is None:
                raise TargetError("moe: expert_types includes 'SA' but this architecture's attention "
                                  "(nn.MultiheadAttention) has no Linear forward to route; "
                                  "expected expert_types=['FFN']")
            patterns.append(spec.attn)
        if "FFN" in config.expert_types:
            patterns += [spec.ffn_in, spec.ffn_out]
        return find_targets(model, "|".join(f"(?:{p})" for p in patterns), target_types=["Linear"],
                            exclude_modules=config.exclude_modules, what="moe")

    def plan(self, model: nn.Module, config: MoeConfig) -> list[PlannedLayer]:
        spec = family_spec(model)
        regex = config.layer_regex or (spec.layer if spec else DEFAULT_LAYER_REGEX)
        selected: list[tuple[str, nn.Module, str | None]] = []
        seen_layers: set[int] = set()
        for name, module in self._targets(model, config, spec):
            found = layer_index(name, regex)
            if found is None:
                if config.layers != "all":
                    raise TargetError(f"moe: cannot read a layer index from {name!r} with layer_regex={regex!r}; "
                                      "give layer_regex or layers='all'")
                selected.append((name, module, None))
                continue
            index, block = found
            seen_layers.add(index)
            if _keep_layer(index, config.layers):
                selected.append((name, module, block))
        if not selected:
            raise TargetError(f"moe: layers={config.layers!r} selects none of the targeted layers "
                              f"(layer indices found: {sorted(seen_layers)})")
        planned: list[PlannedLayer] = []
        groups: dict[str, GateGroup] = {}
        for name, module, block in selected:
            try:
                self.check_host(name, module, config)
                parent, _ = get_parent(model, name)
                if isinstance(parent, nn.MultiheadAttention):
                    raise TargetError("the Linears of nn.MultiheadAttention are read inside "
                                      "F.multi_head_attention_forward, their forward never runs; "
                                      "expected another host")
            except TargetError as exc:
                raise TargetError(f"moe: module {name!r} ({type(module).__name__}): {exc}") from None
            key = self._group_key(name, block, spec, config)
            if key not in groups:
                block_module = model.get_submodule(block) if block is not None else None
                groups[key] = GateGroup(key, block_module, shared=key != name)
            group = groups[key]
            planned.append(PlannedLayer(name, module, _builder(module, config, group)))
        return planned

    @staticmethod
    def _group_key(name: str, block: str | None, spec: MoeSpec | None, config: MoeConfig) -> str:
        if block is None or spec is None:
            return name
        if spec.attn is not None and re.fullmatch(spec.attn, name):
            return f"{block}:SA" if config.share_attention_gate else name
        if re.fullmatch(spec.ffn_in, name):
            return f"{block}:FFN"
        if re.fullmatch(spec.ffn_out, name):
            return f"{block}:FFN" if config.ffn_share_gate_decision else name
        return name


def _builder(module: nn.Module, config: MoeConfig, group: GateGroup) -> Callable[[], MoeLayer]:
    return lambda: MoeLayer(module, config, group)


register_method(MoeTuner())


@register_preset("uniperceiver-moe", "Uni-Perceiver-MoE conditional MoE: 8 experts, top-2, attribute routing (vmoe "
                 "noise), FFN+SA Linears of even-indexed layers, shared FFN gate decision",
                 "fundamentalvision/Uni-Perceiver configs/BERT_L12_H768_experiments/moe_finetuning "
                 "(uniperceiver_lst.md)")
def uniperceiver_moe(**kw: object) -> MoeConfig:
    return MoeConfig(**{"num_experts": 8, "top_k": 2, "routing": "attribute", "layers": "odd",
                        "expert_types": ["FFN", "SA"], "noise_policy": "vmoe", "noise_std": 1.0,
                        "ffn_share_gate_decision": True, **kw})


@register_preset("moe-token", "Conditional MoE with token routing: 8 experts, top-2, Switch/GShard load-balancing "
                 "loss, FFN+SA Linears of even-indexed layers",
                 "Uni-Perceiver-MoE paper (Zhu et al. 2022), token-level conditional MoE; not in the released code")
def moe_token(**kw: object) -> MoeConfig:
    return MoeConfig(**{"num_experts": 8, "top_k": 2, "routing": "token", "layers": "odd",
                        "expert_types": ["FFN", "SA"], **kw})
