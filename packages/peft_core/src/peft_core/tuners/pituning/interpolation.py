"""pi-Tuning step 3: interpolate N trained experts of one method with learnable softmax weights, then collapse.

Bottleneck adapter (upstream TencentARC/pi-Tuning @ 3b60701
``OFA/models/ofa/unify_transformer_layer.py:TransformerEncoderLayer.forward``, adapter_interpolation branch),
per host::

    p    = softmax(w)                                  w: (N,) logits of this host, init ones (uniform) or given
    down = sum_i p_i * (W_down_i z + b_down_i)         (the N down projections mixed BEFORE the activation)
    h    = dropout_0(act_0(down))                      (activation / dropout of expert 0)
    up_i = s_0 * (W_up_i h + b_up_i)                   (EVERY up projection applied to the same h; scale of expert 0)
    f    = sum_i p_i * up_i                            serial: out' = out + f(out); parallel: out' = out + f(x)

which is exactly the adapter with parameters ``phi* = sum_i p_i phi_i`` (the down projection is linear before the
activation, the up projection linear after it): :func:`collapse_interpolation` writes that single adapter.

LoRA (upstream ``OFA/models/ofa/unify_multihead_attention.py``: ``sum_i p_i * lora_i(x)`` over N loralib Linears that
each hold a copy of the frozen base weight)::

    delta W = sum_i p_i * (alpha / r) * B_i A_i

Mixing ``B`` and ``A`` separately is not exact, so the collapsed checkpoint is an exact LoRA of rank ``N * r``:
``B' = [p_1 B_1, ..., p_N B_N]``, ``A' = [A_1; ...; A_N]``, ``alpha' = N * alpha`` (same ``alpha' / r'``).

Prefix (upstream ``OFA/models/ofa/unify_transformer.py``, ``prompt_weight_scale``): per attention
``[P_k ; P_v] = sum_i p_i * dropout_i([P_k,i ; P_v,i])``; collapses to the direct prefix ``sum_i p_i P_i``.

Frozen experts (``train_experts=False``) enter the forward detached, so they never get a gradient, whatever their
``requires_grad`` flag says. Differences from upstream: one logit vector per host (upstream LoRA shares one vector
across q, k, v and out of an attention); the base weight is not duplicated N times; the interpolation collapses to an
ordinary checkpoint; ``train_experts`` decides for every method (upstream's prompt path freezes the experts through a
typo).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from peft_core.attention import KVExtension, disable_interception, enable_interception, site_of
from peft_core.attention.sites import AttentionSite
from peft_core.checkpoint import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, read_adapter_config
from peft_core.config import PetlConfig, config_from_dict
from peft_core.io import atomic_write, atomic_write_text
from peft_core.layer import (
    PETL_ATTR,
    MethodLayer,
    add_param_delta,
    map_primary_output,
    primary_input,
    remove_param_delta,
)
from peft_core.model import AdapterRecord, adapter_records, add_adapter, delete_adapter, iter_layers
from peft_core.registry import get_method, register_method, register_preset
from peft_core.tuner import PlannedLayer, Tuner
from peft_core.tuners.bottleneck.config import BottleneckConfig
from peft_core.tuners.bottleneck.layer import BottleneckLayer
from peft_core.tuners.lora.layer import (
    LoraConv2dLayer,
    LoraLinearDelta,
    LoraLinearLayer,
    LoraMultiheadAttentionLayer,
)
from peft_core.tuners.prefix.config import PrefixConfig
from peft_core.tuners.prefix.layer import PrefixLayer

INTERPOLABLE = ("bottleneck", "lora", "prefix")
"""Expert methods that can be interpolated."""


@dataclasses.dataclass
class PiInterpolationConfig(PetlConfig):
    """N experts of one method (``expert_config``, a config dict) at the expert method's hosts, mixed per host by
    ``softmax(logits)``.

    Attributes:
        expert_config: ``PetlConfig.to_dict()`` of the experts (every expert has this config).
        num_experts: N >= 2.
        train_experts: also train the experts (upstream ``--learnable-scale`` trains experts and logits); False
            trains only the logits.
        init_logits: the N initial logits of every host (upstream ``--init-scale``); None = ones (uniform weights).
    """

    method = "pi_interpolation"

    expert_config: dict[str, Any] | None = None
    num_experts: int = 2
    train_experts: bool = False
    init_logits: list[float] | None = None

    def validate(self) -> None:
        super().validate()
        for name in ("target_modules", "target_types", "exclude_modules", "modules_to_save"):
            if getattr(self, name) is not None:
                raise ValueError(f"{name}={getattr(self, name)!r} is not allowed; expected None (the hosts are those "
                                 "of expert_config)")
        if not isinstance(self.expert_config, dict) or self.expert_config.get("method") not in INTERPOLABLE:
            method = self.expert_config.get("method") if isinstance(self.expert_config, dict) else None
            raise ValueError(f"expert_config with method={method!r} is not allowed; expected a config dict of one of "
                             f"{list(INTERPOLABLE)}")
        expert = self.expert
        if expert.modules_to_save:
            raise ValueError(f"expert_config modules_to_save={expert.modules_to_save!r} is not allowed; expected None "
                             "(interpolation mixes the method's own parameters only)")
        if isinstance(expert, BottleneckConfig) and expert.layer_norm != "none":
            raise ValueError(f"expert_config layer_norm={expert.layer_norm!r} is not allowed; expected 'none' (the "
                             "pi-Tuning interpolation has no LayerNorm)")
        if not isinstance(self.num_experts, int) or self.num_experts < 2:
            raise ValueError(f"num_experts={self.num_experts!r} is not allowed; expected an integer >= 2")
        if self.init_logits is not None and (
            len(self.init_logits) != self.num_experts or not all(math.isfinite(float(v)) for v in self.init_logits)
        ):
            raise ValueError(f"init_logits={self.init_logits!r} is not allowed; expected {self.num_experts} finite "
                             "numbers (one per expert)")

    @property
    def expert(self) -> PetlConfig:
        """The experts' config object."""
        assert self.expert_config is not None
        return config_from_dict(self.expert_config, source="expert_config")


def _maybe_detach(t: torch.Tensor, trainable: bool) -> torch.Tensor:
    return t if trainable else t.detach()


class _InterpolatedLayer(MethodLayer):
    """Common part: ``experts`` (N layers of the expert method, never attached themselves) and ``logits`` (N,)."""

    def __init__(self, experts: Sequence[MethodLayer], config: PiInterpolationConfig) -> None:
        super().__init__()
        self.experts = nn.ModuleList(experts)
        init = config.init_logits if config.init_logits is not None else [1.0] * len(experts)
        self.logits = nn.Parameter(torch.tensor([float(v) for v in init]))
        self.train_experts = config.train_experts

    def frozen_parameter_names(self) -> set[str]:
        """Frozen experts stay frozen under :func:`peft_core.mark_trainable` (only the logits train)."""
        if self.train_experts:
            return set()
        return {f"experts.{n}" for n, _ in self.experts.named_parameters()}

    def weights(self) -> torch.Tensor:
        """The interpolation weights ``softmax(logits)`` (N,)."""
        return F.softmax(self.logits, dim=-1)

    def collapsed_state(self, host: nn.Module) -> dict[str, torch.Tensor]:
        """The expert-method parameters equal to this interpolation (keys relative to the expert layer)."""
        raise NotImplementedError


class InterpolatedBottleneckLayer(_InterpolatedLayer):
    """pi-Tuning adapter interpolation (see the module docstring for the formula and the upstream reference)."""

    def __init__(self, experts: Sequence[BottleneckLayer], config: PiInterpolationConfig) -> None:
        super().__init__(experts, config)
        self.mode = experts[0].mode
        self.residual = experts[0].residual

    def adapter(self, z: torch.Tensor) -> torch.Tensor:
        p = self.weights()
        ads = [e.adapter for e in self.experts]
        train = self.train_experts
        down = torch.stack([F.linear(z, _maybe_detach(a.down.weight, train), _maybe_detach(a.down.bias, train))
                            for a in ads], dim=-1)
        first = ads[0]
        h = first.dropout(first.act(torch.sum(down * p, dim=-1)))
        scale = first.scale if not isinstance(first.scale, torch.Tensor) else _maybe_detach(first.scale, train)
        up = scale * torch.stack([F.linear(h, _maybe_detach(a.up.weight, train), _maybe_detach(a.up.bias, train))
                                  for a in ads], dim=-1)
        return torch.sum(up * p, dim=-1)

    def post(self, host: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        if self.mode == "serial":
            return map_primary_output(output,
                                      lambda out: out + self.adapter(out) if self.residual else self.adapter(out))
        x = primary_input(args, kwargs)
        return map_primary_output(output, lambda out: out + self.adapter(x))

    def collapsed_state(self, host: nn.Module) -> dict[str, torch.Tensor]:
        p = self.weights().detach()
        state: dict[str, torch.Tensor] = {}
        expert_params = [dict(e.named_parameters()) for e in self.experts]
        for key, first in expert_params[0].items():
            if key.endswith("scale"):  # a learnable scale is expert 0's, as in the interpolated forward
                state[key] = first.detach().clone()
            else:
                state[key] = sum(p[i].to(first.dtype) * params[key].detach() for i, params in enumerate(expert_params))
        return state


class InterpolatedLoraLayer(_InterpolatedLayer):
    """pi-Tuning LoRA interpolation ``delta W = sum_i p_i (alpha / r) B_i A_i`` on a Linear (also fused qkv),
    Conv2d or ``nn.MultiheadAttention`` host (see the module docstring)."""

    def __init__(self, experts: Sequence[MethodLayer], config: PiInterpolationConfig) -> None:
        super().__init__(experts, config)
        kinds = {type(e) for e in experts}
        if len(kinds) != 1 or not kinds <= {LoraLinearLayer, LoraConv2dLayer, LoraMultiheadAttentionLayer}:
            raise TypeError(f"cannot interpolate LoRA layers of types {sorted(k.__name__ for k in kinds)}")
        self.kind = type(experts[0])

    # ------------------------------------------------------------------------------------------------ deltas
    def _linear_delta(self, d: LoraLinearDelta) -> torch.Tensor:
        train = self.train_experts
        return d.expand((_maybe_detach(d.lora_B, train) @ _maybe_detach(d.lora_A, train)).T).T * d.scaling

    def _conv_delta(self, e: LoraConv2dLayer) -> torch.Tensor:
        train = self.train_experts
        return torch.einsum("or,rikl->oikl", _maybe_detach(e.lora_B.weight, train)[:, :, 0, 0],
                            _maybe_detach(e.lora_A.weight, train)) * e.scaling

    def delta_weight(self, part: str = "") -> torch.Tensor:
        """``sum_i p_i delta_i`` of the host weight (``part`` ``in_proj`` / ``out_proj`` for MultiheadAttention)."""
        p = self.weights()
        if self.kind is LoraConv2dLayer:
            deltas = [self._conv_delta(e) for e in self.experts]
        elif self.kind is LoraLinearLayer:
            deltas = [self._linear_delta(e.lora) for e in self.experts]
        else:
            deltas = [self._linear_delta(getattr(e, part)) for e in self.experts]
        return sum(p[i].to(d.dtype) * d for i, d in enumerate(deltas))

    # ----------------------------------------------------------------------------------------------- forward
    def _branch(self, e: MethodLayer, x: torch.Tensor) -> torch.Tensor:
        train = self.train_experts
        if self.kind is LoraLinearLayer:
            d = e.lora
            h = F.linear(F.linear(d.dropout(x), _maybe_detach(d.lora_A, train)), _maybe_detach(d.lora_B, train))
            return d.expand(h * d.scaling)
        h = e.lora_A._conv_forward(e.dropout(x), _maybe_detach(e.lora_A.weight, train), None)
        return F.conv2d(h, _maybe_detach(e.lora_B.weight, train)) * e.scaling

    def attach(self, host: nn.Module) -> None:
        if self.kind is LoraMultiheadAttentionLayer:
            add_param_delta(host, "in_proj_weight", self, functools.partial(self.delta_weight, "in_proj"))
            add_param_delta(host.out_proj, "weight", self, functools.partial(self.delta_weight, "out_proj"))
        else:
            super().attach(host)

    def detach(self, host: nn.Module) -> None:
        if self.kind is LoraMultiheadAttentionLayer:
            remove_param_delta(host, "in_proj_weight", self)
            remove_param_delta(host.out_proj, "weight", self)
        else:
            super().detach(host)

    def post(self, host: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        x = primary_input(args, kwargs)
        p = self.weights()

        def add(out: torch.Tensor) -> torch.Tensor:
            xin = x.to(out.dtype)
            return out + torch.stack([self._branch(e, xin) for e in self.experts], dim=-1).mul(p.to(out.dtype)).sum(-1)

        return map_primary_output(output, add)

    # ----------------------------------------------------------------------------------------------- merging
    def can_merge(self) -> bool:
        return True

    def merge(self, host: nn.Module) -> None:
        with torch.no_grad():
            if self.kind is LoraMultiheadAttentionLayer:
                host.parametrizations.in_proj_weight.original += self.delta_weight("in_proj")
                host.out_proj.parametrizations.weight.original += self.delta_weight("out_proj")
            else:
                host.weight += self.delta_weight().to(host.weight.dtype)

    def unmerge(self, host: nn.Module) -> None:
        with torch.no_grad():
            if self.kind is LoraMultiheadAttentionLayer:
                host.parametrizations.in_proj_weight.original -= self.delta_weight("in_proj")
                host.out_proj.parametrizations.weight.original -= self.delta_weight("out_proj")
            else:
                host.weight -= self.delta_weight().to(host.weight.dtype)

    def collapsed_state(self, host: nn.Module) -> dict[str, torch.Tensor]:
        p = self.weights().detach()
        expert_params = [dict(e.named_parameters()) for e in self.experts]
        state: dict[str, torch.Tensor] = {}
        for key in expert_params[0]:
            tensors = [params[key].detach() for params in expert_params]
            if key.endswith("lora_A") or key.endswith("lora_A.weight"):
                state[key] = torch.cat(tensors, dim=0)
            elif key.endswith("lora_B") or key.endswith("lora_B.weight"):
                state[key] = torch.cat([p[i].to(t.dtype) * t for i, t in enumerate(tensors)], dim=1)
            else:
                raise CheckpointError(f"cannot collapse LoRA parameter {key!r}: expected lora_A / lora_B only")
        return state


class InterpolatedPrefixLayer(_InterpolatedLayer, KVExtension):
    """pi-Tuning prompt interpolation (upstream ``OFA/models/ofa/unify_transformer.py``, ``prompt_num > 1``:
    ``prompt_kv = sum_i softmax(prompt_weight_scale[layer])_i * prompt_kv_i[layer]``)::

        [P_k ; P_v] = sum_i p_i * dropout_i([P_k,i ; P_v,i])      (each expert's prefix with its own dropout)

    Collapse: ``space='kv'``: the direct prefix ``sum_i p_i P_i`` (exact); ``space='hidden'`` without ``hidden_norm``:
    ``prompt* = sum_i p_i prompt_i`` (exact, the key/value projections are affine and ``sum_i p_i = 1``); with a
    ``hidden_norm`` the mixture is not a single prompt and collapse is refused."""

    def attach(self, host: nn.Module) -> None:
        enable_interception(host)

    def detach(self, host: nn.Module) -> None:
        disable_interception(host)

    def extra_kv(self, site: AttentionSite, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.weights()
        pairs = [e.extra_kv(site, batch_size) for e in self.experts]
        if not self.train_experts:
            pairs = [(k.detach(), v.detach()) for k, v in pairs]
        key = torch.stack([k for k, _ in pairs], dim=-1).mul(p.to(pairs[0][0].dtype)).sum(-1)
        value = torch.stack([v for _, v in pairs], dim=-1).mul(p.to(pairs[0][1].dtype)).sum(-1)
        return key, value

    def collapsed_state(self, host: nn.Module) -> dict[str, torch.Tensor]:
        p = self.weights().detach()
        first: PrefixLayer = self.experts[0]
        if first.space == "hidden":
            if first._hidden_norm is not None:
                raise ValueError("cannot collapse an interpolation of prefixes with hidden_norm: norm(sum_i p_i P_i) "
                                 "is not sum_i p_i norm(P_i); expected hidden_norm=None or space='kv'")
            return {"prompt": sum(p[i] * e.prompt.detach() for i, e in enumerate(self.experts))}
        site = site_of(host)
        with torch.no_grad():
            pairs = [e.raw_kv(site) for e in self.experts]
        return {"prefix_key": sum(p[i] * k.detach() for i, (k, _) in enumerate(pairs)),
                "prefix_value": sum(p[i] * v.detach() for i, (_, v) in enumerate(pairs))}


class PiInterpolationTuner(Tuner):
    """Hosts and expert layers come from the expert method's own tuner (N independent plans, so that experts never
    share parameters, e.g. prefix MLPs shared per stack); each host gets its N expert layers, interpolated."""

    config_cls = PiInterpolationConfig

    def plan(self, model: nn.Module, config: PiInterpolationConfig) -> list[PlannedLayer]:
        expert = config.expert
        tuner = get_method(expert.method)
        plans = [tuner.plan(model, expert) for _ in range(config.num_experts)]
        return [PlannedLayer(first.host_name, first.host, _builder([plan[j] for plan in plans], config))
                for j, first in enumerate(plans[0])]


def _builder(planned: list[PlannedLayer], config: PiInterpolationConfig) -> Callable[[], MethodLayer]:
    def build() -> MethodLayer:
        experts = [p.build() for p in planned]
        if isinstance(experts[0], BottleneckLayer):
            return InterpolatedBottleneckLayer(experts, config)
        if isinstance(experts[0], PrefixLayer):
            return InterpolatedPrefixLayer(experts, config)
        return InterpolatedLoraLayer(experts, config)

    return build


register_method(PiInterpolationTuner())


@register_preset("pi-adapter", "pi-Tuning adapter expert: serial bottleneck r=128, ReLU, BERT init, scale 1.0, after "
                 "the self-attention output and after the FFN output (no cross-attention adapter)",
                 "TencentARC/pi-Tuning OFA/models/ofa/unify_transformer_layer.py:Adapter_Layer, "
                 "run_scripts/refcoco (pituning.md)")
def pi_adapter(**kw: object) -> BottleneckConfig:
    return BottleneckConfig(**{"placement": "houlsby", "mode": "serial", "bottleneck_dim": 128, "activation": "relu",
                               "init": "bert", "scale": 1.0, "exclude_modules": ["encoder_attn.out_proj",
                                                                                  "EncDecAttention.o"], **kw})


# --------------------------------------------------------------------------------------------------- public API
def _host_prefix(host_name: str) -> str:
    return f"{host_name}.{PETL_ATTR}." if host_name else f"{PETL_ATTR}."


def _read_expert(item: str | Path | Mapping[str, torch.Tensor], index: int
                 ) -> tuple[PetlConfig | None, dict[str, torch.Tensor], str]:
    if isinstance(item, str | Path):
        directory = Path(item)
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"{weights}: expert {index} weights not found (expected {WEIGHTS_NAME} written by "
                                    "save_adapter)")
        return read_adapter_config(directory), load_file(str(weights)), str(directory)
    if isinstance(item, Mapping):
        return None, dict(item), f"experts[{index}] (state dict)"
    raise TypeError(f"experts[{index}] is a {type(item).__name__}; expected a checkpoint folder or a state dict")


def _config_difference(a: PetlConfig, b: PetlConfig) -> list[tuple[str, Any, Any]]:
    da, db = a.to_dict(), b.to_dict()
    return [(k, da.get(k), db.get(k)) for k in sorted(set(da) | set(db)) if da.get(k) != db.get(k)]


def interpolate_experts(model: nn.Module, experts: Sequence[str | Path | Mapping[str, torch.Tensor]],
                        name: str = "pi", train_experts: bool = False,
                        init_logits: Sequence[float] | torch.Tensor | None = None,
                        config: PetlConfig | None = None) -> AdapterRecord:
    """Add adapter ``name``: the N ``experts`` interpolated at every host with learnable weights ``softmax(logits)``.

    ``experts`` are checkpoint folders written by :func:`peft_core.save_adapter` and/or their state dicts
    (:func:`peft_core.adapter_state_dict`); every folder must hold the same config (else ``ValueError`` naming the
    first differing field); ``config`` gives it when only state dicts are passed. The logits are trainable; the
    experts' parameters only with ``train_experts`` (frozen experts get no gradient even if their ``requires_grad``
    is switched on later, e.g. by :func:`peft_core.mark_trainable`). The base model's ``requires_grad`` flags are
    left as they are. The model is unchanged if any check fails.
    """
    if len(experts) < 2:
        raise ValueError(f"experts has {len(experts)} entries; expected at least 2 (one expert is itself: load it "
                         "with load_adapter)")
    loaded = [_read_expert(item, i) for i, item in enumerate(experts)]
    reference = config
    reference_source = "config"
    for cfg, _, source in loaded:
        if cfg is not None and reference is None:
            reference, reference_source = cfg, source
    if reference is None:
        raise ValueError("config=None is not allowed when every expert is a state dict; expected the experts' config")
    for i, (cfg, _, source) in enumerate(loaded):
        if cfg is None:
            continue
        diff = _config_difference(reference, cfg)
        if diff:
            field, want, got = diff[0]
            raise ValueError(f"expert {i} ({source}) has {field}={got!r} but {reference_source} has {field}={want!r}; "
                             f"expected every expert to have the same config (differing fields: "
                             f"{[d[0] for d in diff]})")
    init = None
    if init_logits is not None:
        init = [float(v) for v in (init_logits.tolist() if isinstance(init_logits, torch.Tensor) else init_logits)]
    interp = PiInterpolationConfig(expert_config=reference.to_dict(), num_experts=len(experts),
                                   train_experts=train_experts, init_logits=init)
    record = add_adapter(model, interp, name)
    try:
        _load_experts(model, name, loaded)
    except Exception:
        delete_adapter(model, name)
        raise
    for _, _, layer in iter_layers(model, name):
        layer.logits.requires_grad_(True)
        for param in layer.experts.parameters():
            param.requires_grad_(train_experts)
    return record


def _checkpoint_tensors(layer: nn.Module) -> dict[str, torch.Tensor]:
    """What ``save_adapter`` writes for one expert layer: its parameters and persistent buffers."""
    out: dict[str, torch.Tensor] = dict(layer.named_parameters())
    for bname, b in layer.named_buffers():
        owner, _, leaf = bname.rpartition(".")
        if leaf not in (layer.get_submodule(owner) if owner else layer)._non_persistent_buffers_set:
            out[bname] = b
    return out


def _load_experts(model: nn.Module, name: str, loaded: list[tuple[PetlConfig | None, dict, str]]) -> None:
    layers = list(iter_layers(model, name))
    plans: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
    for i, (_, state, source) in enumerate(loaded):
        targets = {_host_prefix(h) + k: t for h, _, layer in layers
                   for k, t in _checkpoint_tensors(layer.experts[i]).items()}
        missing = sorted(set(targets) - set(state))
        unexpected = sorted(set(state) - set(targets))
        if missing or unexpected:
            raise CheckpointError(f"{source}: expert {i} keys do not match the expert layers: missing {missing[:5]}, "
                                  f"unexpected {unexpected[:5]}")
        for key, target in targets.items():
            if tuple(state[key].shape) != tuple(target.shape):
                raise CheckpointError(f"{source}: expert {i} shape mismatch at {key}: checkpoint has "
                                      f"{tuple(state[key].shape)}, the model expects {tuple(target.shape)}")
        plans.append([(target, state[key]) for key, target in targets.items()])
    with torch.no_grad():
        for pairs in plans:
            for target, value in pairs:
                target.copy_(value.to(dtype=target.dtype, device=target.device))


def _interpolation_layers(model: nn.Module, name: str) -> list[tuple[str, nn.Module, _InterpolatedLayer]]:
    record = adapter_records(model).get(name)
    if record is None:
        raise ValueError(f"adapter name={name!r} is not on this model; it has {list(adapter_records(model))}")
    if not isinstance(record.config, PiInterpolationConfig):
        raise ValueError(f"adapter {name!r} has method={record.config.method!r}; expected 'pi_interpolation'")
    return list(iter_layers(model, name))  # type: ignore[arg-type]


def interpolation_weights(model: nn.Module, name: str = "pi") -> dict[str, torch.Tensor]:
    """``softmax(logits)`` of every host of interpolation adapter ``name`` (detached copies)."""
    return {h: layer.weights().detach().clone() for h, _, layer in _interpolation_layers(model, name)}


def collapse_interpolation(model: nn.Module, name: str, out_dir: str | Path) -> Path:
    """Write interpolation ``name`` as an ordinary single-expert checkpoint (``load_adapter`` reads it).

    Bottleneck: ``phi* = sum_i p_i phi_i`` per parameter (a learnable scale is expert 0's); LoRA: the exact rank
    ``N * r`` adapter ``B' = [p_i B_i]``, ``A' = [A_i]``, ``alpha' = N * alpha``. Both reproduce the interpolated
    outputs (float rounding aside). Files are written atomically; returns ``out_dir``.
    """
    layers = _interpolation_layers(model, name)
    interp: PiInterpolationConfig = adapter_records(model)[name].config  # type: ignore[assignment]
    expert = interp.expert
    state: dict[str, torch.Tensor] = {}
    for host_name, host, layer in layers:
        for key, value in layer.collapsed_state(host).items():
            state[_host_prefix(host_name) + key] = value.contiguous().cpu()
    if expert.method == "lora":
        n = interp.num_experts
        expert = expert.replace(r=expert.r * n, alpha=expert.alpha * n)
    elif isinstance(expert, PrefixConfig) and expert.space == "kv":
        expert = expert.replace(reparameterization="none", share_mlp=False)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"format": "peft_core", "method": expert.method, "collapsed_from": "pi_interpolation"}
    atomic_write(out / WEIGHTS_NAME, lambda path: save_file(state, str(path), metadata=meta))
    atomic_write_text(out / CONFIG_NAME, expert.to_json())
    return out
