"""Conditional MoE layer: ``E`` experts replacing one ``nn.Linear`` (Uni-Perceiver ``TaskMoE`` + ``FusedExperts``).

Attribute routing (released upstream), per segment ``s`` with routing row ``(idx_s, g_s)`` from the gate::

    W_s = sum_j g_sj * W_{idx_sj}        b_s = sum_j g_sj * b_{idx_sj}
    y_s = F.linear(x_s, W_s, b_s)        (weights merged, not outputs: one matmul per segment)
    y   = cat_s y_s                      (x split into segments along the token axis)

mode ``'q'`` uses only the weight rows ``[0, out/3)``, mode ``'kv'`` the rows ``[out/3, out)`` with the first segment
extended by ``pe_length`` prompt tokens (upstream ``mergelayer`` / ``top2_expert_forward``).

Token routing (paper only): per token ``t``, ``y_t = sum_j g_tj * (W_{idx_tj} x_t + b_{idx_tj})`` (no capacity
limit, no token is dropped), plus the load-balancing loss of :func:`peft_core.tuners.moe.gate.load_balancing_loss`.

Upstream: fundamentalvision/Uni-Perceiver @ a8c9e37 ``uniperceiver/task_moe/{layer,experts,gate}.py`` and
``uniperceiver/modeling/layers/transformer_encoder_moe_layer.py``. The experts are deep copies of the host Linear,
stored stacked (``expert_weight`` (E, out, in), ``expert_bias`` (E, out)); the frozen host stays in the model and
its unused output is never computed (the layer replaces the host's ``forward`` while attached).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F

from peft_core.layer import MethodLayer, primary_input
from peft_core.tuners.moe.config import MoeConfig
from peft_core.tuners.moe.gate import AttributeGate, RoutingDecision, TokenGate, load_balancing_loss

if TYPE_CHECKING:
    from peft_core.tuners.moe.routing import MoeRouting

MODES = (None, "q", "kv")


def _row_slice(out_features: int, mode: str | None) -> slice:
    if mode is None:
        return slice(None)
    if mode == "q":
        return slice(0, out_features // 3)
    if mode == "kv":
        return slice(out_features // 3, None)
    raise ValueError(f"mode={mode!r} is not allowed; expected one of {list(MODES)}")


def merged_expert_weight(weight: torch.Tensor, bias: torch.Tensor | None, indices: torch.Tensor, gates: torch.Tensor,
                         mode: str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(sum_j g_j W_{idx_j}[rows], sum_j g_j b_{idx_j}[rows])`` for one routing row (``indices``, ``gates``: (k,)),
    summed in the order of the k choices as upstream ``mergelayer``."""
    rows = _row_slice(weight.shape[1], mode)
    g = gates.to(weight.dtype)
    w = weight[indices[0], rows] * g[0]
    b = bias[indices[0], rows] * g[0] if bias is not None else None
    for j in range(1, indices.shape[0]):
        w = w + weight[indices[j], rows] * g[j]
        if b is not None:
            b = b + bias[indices[j], rows] * g[j]
    return w, b


def fused_experts_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, indices: torch.Tensor,
                         gates: torch.Tensor, *, segment_lengths: Sequence[int] | None = None, mode: str | None = None,
                         pe_length: int = 0, seq_dim: int = 1) -> torch.Tensor:
    """Segment-routed experts: ``x`` split along ``seq_dim`` into ``len(segment_lengths)`` segments, segment ``s``
    through the merged weight of routing row ``s`` (``indices``/``gates``: (S, k)). One row needs no lengths."""
    n_rows = indices.shape[0]
    if n_rows == 1 and segment_lengths is None:
        w, b = merged_expert_weight(weight, bias, indices[0], gates[0], mode)
        return F.linear(x, w, b)
    if segment_lengths is None or len(segment_lengths) != n_rows:
        raise ValueError(f"segment_lengths={segment_lengths!r} is not allowed; expected {n_rows} lengths, one per "
                         "routing row (attribute vector)")
    lengths = [int(n) for n in segment_lengths]
    if mode == "kv" and pe_length:
        lengths[0] += int(pe_length)
    dim = seq_dim % x.dim()
    if sum(lengths) != x.shape[dim]:
        raise ValueError(f"segment_lengths={list(segment_lengths)} (+ pe_length={pe_length} for mode 'kv') sum to "
                         f"{sum(lengths)}, but the input has {x.shape[dim]} tokens along seq_dim={seq_dim}")
    outs = []
    for s, part in enumerate(torch.split(x, lengths, dim=dim)):
        w, b = merged_expert_weight(weight, bias, indices[s], gates[s], mode)
        outs.append(F.linear(part, w, b))
    return torch.cat(outs, dim=dim)


def token_experts_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, indices: torch.Tensor,
                         gates: torch.Tensor) -> torch.Tensor:
    """Token-routed experts: ``y_t = sum_j g_tj * (W_{idx_tj} x_t + b_{idx_tj})`` for ``x`` (..., in) with one routing
    row per token (``indices``/``gates``: (N, k), N = number of tokens)."""
    flat = x.reshape(-1, x.shape[-1])
    if flat.shape[0] != indices.shape[0]:
        raise ValueError(f"the routing decision has {indices.shape[0]} tokens but the input has {flat.shape[0]}")
    out = flat.new_zeros(flat.shape[0], weight.shape[1])
    g = gates.to(flat.dtype)
    for e in range(weight.shape[0]):
        chosen = indices == e
        token_ids = chosen.any(dim=1).nonzero(as_tuple=True)[0]
        if token_ids.numel() == 0:
            continue
        combine = (g * chosen.to(g.dtype)).sum(dim=1)[token_ids, None]
        expert_bias = bias[e] if bias is not None else None
        out = out.index_add(0, token_ids, F.linear(flat[token_ids], weight[e], expert_bias) * combine)
    return out.reshape(*x.shape[:-1], weight.shape[1])


class GateGroup:
    """Linears that share one routing decision (q/k/v/out of one attention; the two FFN Linears with
    ``ffn_share_gate_decision``). The first member owns the gate; the decision is computed by whichever member runs
    first after the group's block starts its forward, and reused by the others until the block runs again."""

    def __init__(self, key: str, block: nn.Module | None, shared: bool) -> None:
        self.key = key
        self.block = block
        self.shared = shared
        self.owner: MoeLayer | None = None
        self.cache: RoutingDecision | None = None

    def reset(self, *_: Any) -> None:
        self.cache = None


class MoeLayer(MethodLayer):
    """Conditional MoE on an ``nn.Linear`` host: ``E`` expert copies of the host and, for the owner of its
    :class:`GateGroup`, the router (:class:`AttributeGate` or :class:`TokenGate`). See the module docstring."""

    def __init__(self, host: nn.Linear, config: MoeConfig, group: GateGroup) -> None:
        super().__init__()
        if not isinstance(host, nn.Linear):
            raise TypeError(f"MoE needs an nn.Linear host, got {type(host).__name__}")
        num_experts = config.num_experts
        weight = host.weight.detach()
        self.expert_weight = nn.Parameter(weight.unsqueeze(0).repeat(num_experts, 1, 1).clone())
        if host.bias is not None:
            self.expert_bias = nn.Parameter(host.bias.detach().unsqueeze(0).repeat(num_experts, 1).clone())
        else:
            self.register_parameter("expert_bias", None)
        self.routing_kind = config.routing
        self.seq_dim = config.seq_dim
        self.attribute_length = config.attribute_length
        self.default_attributes = list(config.default_attributes) if config.default_attributes is not None else None
        self.group = group
        self.routing: MoeRouting | None = None
        self.last_aux_loss: torch.Tensor | None = None
        self._prev_forward: Any = None
        if group.owner is None:
            group.owner = self
            common = dict(noise_policy=config.noise_policy, noise_std=config.noise_std, top1_gate=config.top1_gate)
            if config.routing == "attribute":
                dim = config.gate_dim or min(host.in_features, host.out_features)
                self.gate = AttributeGate(config.attribute_length, dim, num_experts, config.top_k,
                                          act=config.tag_transform_act, **common)
            else:
                self.gate = TokenGate(host.in_features, num_experts, config.top_k, **common)
        else:
            self.gate = None

    # ------------------------------------------------------------------------------------------- attach / detach
    def attach(self, host: nn.Module) -> None:
        object.__setattr__(self, "_host", host)
        self._prev_forward = host.__dict__.get("forward")
        host.forward = self._host_forward
        if self.group.owner is self and self.group.block is not None:
            # invalidates the shared decision at every forward of the block; a hook on the block also keeps
            # nn.TransformerEncoderLayer off its fused fast path, which would bypass the experts
            self._handles.append(self.group.block.register_forward_pre_hook(self.group.reset))

    def detach(self, host: nn.Module) -> None:
        super().detach(host)
        current = host.__dict__.get("forward")
        if getattr(current, "__self__", None) is not self:
            raise RuntimeError(f"the forward of this {type(host).__name__} was replaced after the MoE layer attached; "
                               "detach the later wrapper first")
        if self._prev_forward is None:
            del host.__dict__["forward"]
        else:
            host.forward = self._prev_forward
        self._prev_forward = None
        self.group.reset()

    def _call_original(self, *args: Any, **kwargs: Any) -> Any:
        if self._prev_forward is not None:
            return self._prev_forward(*args, **kwargs)
        host = self._host
        return type(host).forward(host, *args, **kwargs)

    def _host_forward(self, *args: Any, **kwargs: Any) -> Any:
        if not self.active or self.merged:
            return self._call_original(*args, **kwargs)
        return self.expert_forward(primary_input(args, kwargs))

    # ----------------------------------------------------------------------------------------------- routing
    def _attributes(self, device: torch.device) -> torch.Tensor:
        if self.routing is not None and self.routing.attributes is not None:
            return self.routing.attributes.to(device=device, dtype=torch.float32)
        if self.default_attributes is not None:
            return torch.tensor([self.default_attributes], dtype=torch.float32, device=device)
        name = getattr(self, "adapter_name", "default")
        raise RuntimeError(f"MoE adapter {name!r} uses attribute routing but no attribute vector is set: run the "
                           "forward inside `with moe_routing(model, attributes=...)` or set default_attributes")

    def decide(self, x: torch.Tensor) -> RoutingDecision:
        """The routing decision for input ``x`` (shared within the gate group during one block forward)."""
        group = self.group
        if group.shared and group.cache is not None:
            return group.cache
        owner = group.owner
        assert owner is not None and owner.gate is not None
        if self.routing_kind == "attribute":
            decision = owner.gate(self._attributes(x.device))
        else:
            decision = owner.gate(x.reshape(-1, x.shape[-1]))
            mask = self.routing.token_mask if self.routing is not None else None
            if mask is not None and mask.numel() != decision.rows:
                raise ValueError(f"token_mask has {mask.numel()} entries but the MoE input at this layer has "
                                 f"{decision.rows} tokens; expected the input's shape without its feature axis")
            owner.last_aux_loss = load_balancing_loss(
                decision.probs, decision.indices[:, 0], mask.to(x.device) if mask is not None else None)
        if group.shared:
            group.cache = decision
        return decision

    def expert_forward(self, x: torch.Tensor, mode: str | None = None) -> torch.Tensor:
        """The experts applied to ``x``. ``mode`` ``'q'`` / ``'kv'`` use the query rows / key-value rows of a fused qkv
        weight (attribute routing; as upstream's ``qkv_proj(..., mode=...)`` with history states)."""
        decision = self.decide(x)
        if self.routing_kind == "token":
            if mode is not None:
                raise ValueError(f"mode={mode!r} is not allowed with token routing; expected None")
            return token_experts_linear(x, self.expert_weight, self.expert_bias, decision.indices, decision.gates)
        lengths = self.routing.segment_lengths if self.routing is not None else None
        pe_length = self.routing.pe_length if self.routing is not None else 0
        return fused_experts_linear(x, self.expert_weight, self.expert_bias, decision.indices, decision.gates,
                                    segment_lengths=lengths, mode=mode, pe_length=pe_length, seq_dim=self.seq_dim)

    def extra_repr(self) -> str:
        e, o, i = self.expert_weight.shape
        return f"experts={e}, in={i}, out={o}, routing={self.routing_kind}, gate_owner={self.gate is not None}"
