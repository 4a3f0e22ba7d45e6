"""V-PETL recipes by configuration: a recipe is a list of peft_core configs (one adapter each) plus the head.

Every method comes from peft_core; this module only chooses configs. A recipe is written as components joined
by ``+`` (names match shared/baselines/v_petl.toml):

    adaptformer-<r>        AdaptFormer FFN adapter beside every ``mlp``: MLP(x) + s * up(ReLU(down(x))), s = 0.1,
                           LoRA init (V-PETL ``--ffn_adapt --ffn_num r``; peft_core preset ``adaptformer-64``)
    patt-<kv|qv|qk|qkv>-<m> PATT on every ``attn.qkv``: K' = K + s dK, V' = V + s dV with [dK | dV] =
                           up(tanh(down(x))), mid dim m (``--att_prefix --att_prefix_mode patt_kv --att_mid_dim m``)
    prefix-<L>             L prefix keys/values per window attention (``--att_prefix_mode prefix_kv``, which
                           crashes upstream; peft_core ``window_prefix``)
    lora-<r> | lora        LoRA on the fused ``attn.qkv`` (alpha = r unless given)
    bitfit                 every bias of the backbone (head excluded: it is trained whole)
    head-only              linear probe: the head alone (alias ``linear-probe``)
    full                   full fine-tuning (alias ``full-finetune``)
    readme                 alias of ``adaptformer-64+patt-kv-128`` (V-PETL README HMDB51 recipe, s_patt = 0.8)

The head (``head``) is always trainable (``mark_trainable(extra=["head"])``); adapters are named ``ffn``, ``patt``,
``prefix``, ``lora`` and ``bitfit`` on the model. Upstream selection of trainable parameters (``missing_keys`` of
the pre-trained load) is bruceyo/V-PETL@661198dd38:main.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from peft_core import add_adapter, count_parameters, make_config, mark_trainable
from peft_core.config import PetlConfig
from peft_core.report import ParamReport
from torch import nn

HEAD = "head"
ALIASES = {"readme": "adaptformer-64+patt-kv-128", "linear-probe": "head-only", "full-finetune": "full"}
ORDER = ("adaptformer", "patt", "prefix", "lora", "bitfit")
GRAMMAR = ("adaptformer-<r>, patt-{kv,qv,qk,qkv}-<m>, prefix-<L>, lora-<r>, lora, bitfit, head-only, full "
           f"(joined with '+'), or an alias: {', '.join(ALIASES)}")


@dataclass(frozen=True)
class Component:
    """One adapter of a recipe: its name on the model and a function building its config for a model."""

    kind: str
    label: str
    adapter: str
    make: Callable[[nn.Module], PetlConfig] = field(repr=False, compare=False)


@dataclass(frozen=True)
class Recipe:
    """Adapters to add (in order), whether the whole model trains, and the head module (always trainable)."""

    name: str
    components: tuple[Component, ...] = ()
    full: bool = False
    head: str = HEAD

    @property
    def head_only(self) -> bool:
        return not self.components and not self.full

    def configs(self, model: nn.Module) -> list[tuple[str, PetlConfig]]:
        """``(adapter name, config)`` for ``model``."""
        return [(c.adapter, c.make(model)) for c in self.components]


@dataclass(frozen=True)
class RecipeOptions:
    """Method hyper-parameters that are not part of a recipe's name (defaults: the V-PETL README recipe)."""

    patt_scale: float = 0.8
    patt_init: str = "upstream"
    adapter_scale: float = 0.1
    adapter_init: str = "lora"
    prefix_reparam: bool = False
    prefix_mid_dim: int = 64
    lora_alpha: float | None = None


def _bias_modules(model: nn.Module, head: str) -> list[str]:
    """Names of backbone modules owning a bias (head and peft_core modules excluded)."""
    names = []
    for name, module in model.named_modules():
        if not name or name == head or name.startswith(head + ".") or ".petl." in f".{name}.":
            continue
        if isinstance(module._parameters.get("bias"), nn.Parameter):
            names.append(name)
    return names


def _component(token: str, opts: RecipeOptions, head: str) -> Component:
    if m := re.fullmatch(r"adaptformer-(\d+)", token):
        r = int(m[1])
        return Component("adaptformer", token, "ffn", lambda model: make_config(
            "adaptformer-64", bottleneck_dim=r, scale=opts.adapter_scale, init=opts.adapter_init))
    if m := re.fullmatch(r"patt-(kv|qv|qk|qkv)-(\d+)", token):
        mode, mid = f"patt_{m[1]}", int(m[2])
        return Component("patt", token, "patt", lambda model: make_config(
            "patt", mode=mode, mid_dim=mid, scale=opts.patt_scale, init=opts.patt_init))
    if m := re.fullmatch(r"prefix-(\d+)", token):
        length = int(m[1])
        return Component("prefix", token, "prefix", lambda model: make_config(
            "window_prefix", num_tokens=length, reparam=opts.prefix_reparam, mid_dim=opts.prefix_mid_dim))
    if m := re.fullmatch(r"lora(?:-(\d+))?", token):
        r = int(m[1]) if m[1] else 8
        alpha = float(opts.lora_alpha if opts.lora_alpha is not None else r)
        return Component("lora", f"lora-{r}", "lora", lambda model: make_config("lora", r=r, alpha=alpha))
    if token == "bitfit":
        return Component("bitfit", token, "bitfit", lambda model: make_config(
            "bitfit", rule="custom", target_modules=_bias_modules(model, head)))
    raise ValueError(f"recipe component {token!r} is not known; expected {GRAMMAR}")


def build_recipe(spec: str, options: RecipeOptions | None = None, head: str = HEAD) -> Recipe:
    """Parse a recipe name (see the module docstring); components are put in canonical order
    (adaptformer, patt, prefix, lora, bitfit) so the name matches the baseline tables."""
    opts = options or RecipeOptions()
    spec = ALIASES.get(spec.strip().lower(), spec.strip().lower())
    tokens = [t.strip() for t in spec.split("+") if t.strip()]
    if not tokens:
        raise ValueError(f"recipe {spec!r} is empty; expected {GRAMMAR}")
    if tokens in (["head-only"], ["full"]):
        return Recipe(tokens[0], (), full=tokens[0] == "full", head=head)
    if "head-only" in tokens or "full" in tokens:
        raise ValueError(f"recipe {spec!r}: 'head-only' and 'full' cannot be combined with other components")
    components = [_component(t, opts, head) for t in tokens]
    kinds = [c.kind for c in components]
    duplicated = sorted({k for k in kinds if kinds.count(k) > 1})
    if duplicated:
        raise ValueError(f"recipe {spec!r}: component kind(s) {duplicated} given twice; expected each at most once")
    components.sort(key=lambda c: ORDER.index(c.kind))
    return Recipe("+".join(c.label for c in components), tuple(components), head=head)


def apply_recipe(model: nn.Module, recipe: Recipe) -> ParamReport:
    """Add the recipe's adapters to ``model`` and set ``requires_grad`` (adapters + head, or everything for
    ``full``). Returns the parameter report (trainable / total)."""
    for name, config in recipe.configs(model):
        add_adapter(model, config, name)
    if recipe.full:
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        mark_trainable(model, extra=[recipe.head])
    return count_parameters(model)


def list_recipes() -> list[str]:
    """Example recipe names (every V-PETL row of shared/baselines/v_petl.toml is expressible)."""
    return ["adaptformer-64+patt-kv-128", "patt-kv-128", "patt-qkv-128", "adaptformer-64", "prefix-16", "lora-8",
            "bitfit", "head-only", "full"]
