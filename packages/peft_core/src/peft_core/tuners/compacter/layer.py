"""Compacter layers: PHM (parameterized hypercomplex multiplication) linear maps and the serial PHM adapter.

    H = sum_{i=1..n} A_i kron B_i          A_i: n x n ("rule"),  B_i: (in/n) x (out/n),  H: in x out
    PHM(x) = x H + b
    B_i = W_left_i W_right_i               (factorized_phm, rank k: (in/n) x k times k x (out/n))
    adapter:  out' = out + up(act(down(out)))     (serial, after the host; Compacter / VL-Adapter placement)

Upstream: rabeehk/compacter ``seq2seq/hypercomplex/{layers,kronecker,inits}.py`` (``PHMLinear``,
``matvec_product``), ``seq2seq/adapters/adapter_modeling.py:HyperComplexAdapter``; the same code ships in
ylsung/VL_adapter (``--use_compacter``) and ylsung/Ladder-Side-Tuning ``seq2seq/hypercomplex``. Upstream stores
``B`` as ``W`` with shape ``(n, in/n, out/n)`` and the rules as ``phm_rule`` ``(n, n, n)``; the same names and layouts
are used here, so upstream tensors copy over unchanged.

A shared rule (``shared_phm_rule=True``) is ONE parameter per adapter name: it lives in a
:class:`CompacterRuleLayer` on the model root (``model.petl[name].phm_rule``) and every :class:`PHMLinear` of that
adapter reads it through an unregistered reference, so it is counted, saved, loaded and removed exactly once
(upstream assigned the same ``nn.Parameter`` object to every ``PHMLinear``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from peft_core.layer import MethodLayer, map_primary_output
from peft_core.tuners.activations import make_activation
from peft_core.tuners.compacter.config import CompacterConfig


def phm_weight(rule: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """``sum_i kron(rule[i], blocks[i])`` for ``rule`` ``(n, n, n)`` and ``blocks`` ``(n, p, q)``: ``(n p, n q)``.

    ``kron(A, B)[a p + k, c q + l] = A[a, c] B[k, l]``, the layout of ``torch.kron`` and of upstream
    ``kronecker_product_einsum_batched``.
    """
    n, p, q = blocks.shape
    if rule.shape != (n, n, n):
        raise ValueError(
            f"phm rule has shape {tuple(rule.shape)}; expected {(n, n, n)} for blocks {tuple(blocks.shape)}")
    return torch.einsum("iac,ikl->akcl", rule, blocks).reshape(n * p, n * q)


def _glorot(tensor: torch.Tensor, normal: bool) -> None:
    """Upstream ``inits.glorot_{uniform,normal}``: Xavier with gain sqrt(2), applied to each ``tensor[i]``."""
    for i in range(tensor.shape[0]):
        if normal:
            nn.init.xavier_normal_(tensor[i], gain=math.sqrt(2))
        else:
            nn.init.xavier_uniform_(tensor[i], gain=math.sqrt(2))


def init_rule(rule: torch.Tensor, c_init: str, *, shared: bool, init_range: float) -> None:
    """Upstream rule initialisation: per-layer ``normal`` N(0, 0.01) / ``uniform`` U(-0.01, 0.01)
    (``PHMLinear.reset_parameters``); shared ``normal`` N(0, init_range) / ``uniform`` U(-1, 1)
    (``T5ForConditionalGeneration.__init__`` / ``VLT5.__init__``)."""
    with torch.no_grad():
        if c_init == "normal":
            rule.normal_(0.0, init_range if shared else 0.01)
        else:
            bound = 1.0 if shared else 0.01
            rule.uniform_(-bound, bound)


class CompacterRuleLayer(MethodLayer):
    """The shared PHM rule ``A`` ``(n, n, n)`` of one Compacter adapter, held on the model root.

    It registers no hooks; the adapter's :class:`PHMLinear` layers read :attr:`phm_rule` at every forward.
    Upstream: ``T5ForConditionalGeneration.phm_rule`` + ``set_phm_rule`` (rabeehk/compacter, VL_adapter).
    """

    def __init__(self, config: CompacterConfig) -> None:
        super().__init__()
        n = config.hypercomplex_division
        self.phm_rule = nn.Parameter(torch.empty(n, n, n))
        init_rule(self.phm_rule, config.c_init, shared=True, init_range=config.phm_init_range)


class PHMLinear(nn.Module):
    """PHM layer ``y = x H + b``, ``H = sum_{i=1..n} A_i kron B_i`` (``B_i = W_left_i W_right_i`` when factorised).
    Upstream rabeehk/compacter ``seq2seq/hypercomplex/layers.py:PHMLinear``.

    Args:
        in_features, out_features: must both be divisible by ``n``.
        rule_owner: a module whose ``phm_rule`` is the shared rule (not registered here); ``None`` creates a
            per-layer ``phm_rule`` parameter.
    """

    def __init__(self, in_features: int, out_features: int, config: CompacterConfig,
                 rule_owner: nn.Module | None = None) -> None:
        super().__init__()
        n = config.hypercomplex_division
        if in_features % n or out_features % n:
            raise ValueError(
                f"hypercomplex_division={n} must divide in_features={in_features} and out_features={out_features}"
            )
        self.in_features, self.out_features, self.n = in_features, out_features, n
        self.factorized = config.factorized_phm
        p, q, k = in_features // n, out_features // n, config.phm_rank
        if rule_owner is None:
            self.phm_rule = nn.Parameter(torch.empty(n, n, n))
            init_rule(self.phm_rule, config.c_init, shared=False, init_range=config.phm_init_range)
        else:
            object.__setattr__(self, "_rule_owner", rule_owner)
        if self.factorized:
            self.W_left = nn.Parameter(torch.empty(n, p, k))
            self.W_right = nn.Parameter(torch.empty(n, k, q))
            factors = [self.W_left, self.W_right]
        else:
            self.W = nn.Parameter(torch.empty(n, p, q))
            factors = [self.W]
        with torch.no_grad():
            for w in factors:
                if config.w_init == "normal":
                    w.normal_(0.0, config.phm_init_range)
                else:
                    _glorot(w, normal=config.w_init == "glorot-normal")
        self.b = nn.Parameter(torch.zeros(out_features)) if config.bias else None

    @property
    def rule(self) -> torch.Tensor:
        owner = self.__dict__.get("_rule_owner")
        return owner.phm_rule if owner is not None else self.phm_rule

    def blocks(self) -> torch.Tensor:
        """``B`` ``(n, in/n, out/n)``."""
        return torch.bmm(self.W_left, self.W_right) if self.factorized else self.W

    def weight(self) -> torch.Tensor:
        """``H`` ``(in, out)``: ``y = x H + b``."""
        blocks = self.blocks()
        return phm_weight(self.rule.to(blocks.dtype), blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight().T, self.b)

    def extra_repr(self) -> str:
        shared = "shared rule" if "_rule_owner" in self.__dict__ else "own rule"
        return f"in={self.in_features}, out={self.out_features}, n={self.n}, factorized={self.factorized}, {shared}"


class CompacterLayer(MethodLayer):
    """Serial Compacter adapter after its host: ``out' = out + up(act(down(out)))`` with PHM ``down`` (d -> h) and
    ``up`` (h -> d). Upstream: ``HyperComplexAdapter`` inside ``AdapterController`` (residual added there)."""

    def __init__(self, dim: int, config: CompacterConfig, rule_owner: nn.Module | None = None) -> None:
        super().__init__()
        hidden = config.hidden_size(dim)
        self.down = PHMLinear(dim, hidden, config, rule_owner)
        self.act = make_activation(config.activation)
        self.up = PHMLinear(hidden, dim, config, rule_owner)

    def adapter(self, z: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(z)))

    def post(self, host: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        return map_primary_output(output, lambda out: out + self.adapter(out))
