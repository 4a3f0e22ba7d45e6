"""Routers of the conditional MoE: the top-k gate (Uni-Perceiver ``TopKGate``) on attribute vectors or on tokens.

Upstream: fundamentalvision/Uni-Perceiver @ a8c9e37 ``uniperceiver/task_moe/gate.py:TopKGate.top2gating``::

    logits  = wg(input.float())                              (Linear(d, E, bias=False), fp32)
    noisy   = logits + N(0, (NOISE_STD / E)^2)               (policy 'vmoe', training only)
    idx     = topk(noisy if training else logits, k).indices
    p       = softmax(noisy if vmoe else logits)
    g_j     = p[row, idx_j]
    g_j    /= clamp(sum_j g_j, min=finfo.eps)                (k > 1 only)

For ``k == 1`` upstream's ``deepspeed`` path returns ``None`` (and ``top2gating`` with k=1 would give the raw
softmax probability ``p[idx]``). Here ``k == 1`` works: ``top1_gate='straight_through'`` renormalises over the one
selected expert as for ``k > 1`` (value exactly 1; gradient to the router through ``p / stopgrad(p)``),
``top1_gate='softmax'`` keeps upstream's raw probability.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class RoutingDecision:
    """``indices`` (R, k) long and ``gates`` (R, k) float32 per routing row (segment or token); ``probs`` (R, E) the
    softmax the gates were read from."""

    indices: torch.Tensor
    gates: torch.Tensor
    probs: torch.Tensor

    @property
    def rows(self) -> int:
        return int(self.indices.shape[0])


def top_k_gating(logits: torch.Tensor, k: int, *, noisy_logits: torch.Tensor | None = None,
                 softmax_on_noisy: bool = False, top1_gate: str = "straight_through") -> RoutingDecision:
    """Top-k gating of ``logits`` (R, E), as upstream ``top2gating`` (generalised to any k).

    ``noisy_logits`` (if given) choose the experts; the softmax is taken over them when ``softmax_on_noisy``
    (policy ``vmoe``) and over the clean logits otherwise (policy ``rsample``).
    """
    logits = logits.float()
    select = logits if noisy_logits is None else noisy_logits.float()
    indices = torch.topk(select, k, dim=1).indices
    probs = F.softmax(select if (noisy_logits is not None and softmax_on_noisy) else logits, dim=1)
    gates = probs.gather(1, indices)
    if k > 1:
        denom = torch.clamp(gates.sum(dim=1, keepdim=True), min=torch.finfo(gates.dtype).eps)
        gates = gates / denom
    elif top1_gate == "straight_through":
        # value exactly 1, gradient d(log p): 1 + (p - sg(p)) / sg(p)
        gates = 1.0 + (gates - gates.detach()) / gates.detach().clamp(min=torch.finfo(gates.dtype).tiny)
    return RoutingDecision(indices, gates, probs)


def load_balancing_loss(probs: torch.Tensor, top1: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Switch / GShard auxiliary loss ``E * sum_e f_e * P_e``.

    ``f_e``: fraction of the (unmasked) tokens whose first choice is expert e; ``P_e``: mean router probability of
    expert e over those tokens. Equals 1 for a perfectly balanced router. ``mask`` (N,) bool keeps real tokens.
    """
    num_experts = probs.shape[1]
    probs = probs.float()
    one_hot = F.one_hot(top1, num_experts).to(probs.dtype)
    if mask is not None:
        keep = mask.reshape(-1).to(probs.dtype)[:, None]
        count = keep.sum().clamp(min=1.0)
        f = (one_hot * keep).sum(0) / count
        p = (probs * keep).sum(0) / count
    else:
        f = one_hot.mean(0)
        p = probs.mean(0)
    return num_experts * torch.sum(f * p)


class Router(nn.Module):
    """Common part of the gates: logits -> optional training noise -> top-k gating."""

    def __init__(self, num_experts: int, top_k: int, noise_policy: str, noise_std: float, top1_gate: str) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.top_k = top_k
        self.noise_policy = noise_policy
        self.noise_std = noise_std
        self.top1_gate = top1_gate

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample_noise(self, logits: torch.Tensor) -> torch.Tensor:
        """Training noise: ``vmoe`` N(0, (noise_std / E)^2) (upstream ``normal_rsample(num_expert=E / NOISE_STD)``);
        ``rsample`` ``noise_std`` * Gumbel(0, 1)."""
        if self.noise_policy == "vmoe":
            return torch.randn_like(logits) * (self.noise_std / self.num_experts)
        u = torch.rand_like(logits).clamp(min=torch.finfo(logits.dtype).tiny, max=1.0 - torch.finfo(logits.dtype).eps)
        return -torch.log(-torch.log(u)) * self.noise_std

    def forward(self, inputs: torch.Tensor) -> RoutingDecision:
        logits = self.logits(inputs)
        noisy = None
        if self.training and self.noise_policy != "none" and self.noise_std > 0:
            noisy = logits + self.sample_noise(logits)
        return top_k_gating(logits, self.top_k, noisy_logits=noisy, softmax_on_noisy=self.noise_policy == "vmoe",
                            top1_gate=self.top1_gate)


class AttributeGate(Router):
    """Attribute routing (released Uni-Perceiver): ``tag_transform`` = Linear(A, d) [-> GELU] -> LayerNorm(d), then
    ``wg`` = Linear(d, E, bias=False); everything in float32. Input: attribute vectors (S, A), one per segment."""

    def __init__(self, attribute_length: int, dim: int, num_experts: int, top_k: int, *, act: bool = False,
                 noise_policy: str = "vmoe", noise_std: float = 1.0, top1_gate: str = "straight_through") -> None:
        super().__init__(num_experts, top_k, noise_policy, noise_std, top1_gate)
        self.attribute_length = attribute_length
        self.tag_linear = nn.Linear(attribute_length, dim)
        self.tag_act = nn.GELU() if act else None
        self.tag_norm = nn.LayerNorm(dim)
        self.wg = nn.Linear(dim, num_experts, bias=False)

    def embed(self, attributes: torch.Tensor) -> torch.Tensor:
        h = F.linear(attributes.float(), self.tag_linear.weight.float(), self.tag_linear.bias.float())
        if self.tag_act is not None:
            h = F.gelu(h)
        return F.layer_norm(h, self.tag_norm.normalized_shape, self.tag_norm.weight.float(),
                            self.tag_norm.bias.float(), self.tag_norm.eps)

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.dim() != 2 or inputs.shape[1] != self.attribute_length:
            raise ValueError(f"attributes of shape {tuple(inputs.shape)} are not allowed; expected "
                             f"(segments, attribute_length={self.attribute_length})")
        return F.linear(self.embed(inputs), self.wg.weight.float())


class TokenGate(Router):
    """Token routing (Uni-Perceiver-MoE paper, Switch/GShard style): ``logits = wg(x)`` per token in float32,
    ``wg`` = Linear(in_features, E, bias=False). Input: tokens (N, in_features)."""

    def __init__(self, in_features: int, num_experts: int, top_k: int, *, noise_policy: str = "vmoe",
                 noise_std: float = 1.0, top1_gate: str = "straight_through") -> None:
        super().__init__(num_experts, top_k, noise_policy, noise_std, top1_gate)
        self.wg = nn.Linear(in_features, num_experts, bias=False)

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        return F.linear(inputs.float(), self.wg.weight.float())
