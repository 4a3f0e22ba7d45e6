"""VL-PET layers: granularity-controlled gates with a lightweight adapter on encoder sublayers, and the decoder
value parallel adapter (VPA).

Encoder sublayer (X its input, H its frozen output; HenryHZY/VL-PET @ 7430cad ``src/my_transformers/modeling_bart.py``
``BartEncoderLayer.forward`` lines 1147-1381, ``modeling_t5.py`` ``T5LayerSelfAttention`` / ``T5LayerFF``)::

    H'  = H + up(gelu_new(cat_{h<N_h} down_h(H)))          multi-head down adapter
    G   = large   sigmoid(up_g(gelu_new(down_g(X))))                  (B, L, d)
          middleX sigmoid(Linear(d, 1)(X + H'))                       (B, L, 1)
          middleY 1 + z,  z in R^d   (upstream: H' + H' * z, no sigmoid)  (d,)
          small   mean_L sigmoid(Linear(2d, 1)([X; H']))              (B, 1, 1)
    H  -> s * (G * H')                                      what the model then adds to X:
    BART: LN(X + Dropout(s * G * H'))                       T5: X + Dropout(s * G * H')

Decoder cross-attention value (``BartAttentionWithValueAdapter`` lines 329-338, 429-430; ``adapter_controller.py``
150-161; T5Attention ``project_vpa``)::

    V = v_proj(E) + up(gelu_new(down(E)))                   E = encoder output; no LN, no scaling
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from peft_core.layer import MethodLayer, map_primary_output, primary_input
from peft_core.tuners.activations import GeluNew
from peft_core.tuners.bottleneck.layer import BottleneckAdapter
from peft_core.tuners.compacter.config import CompacterConfig
from peft_core.tuners.compacter.layer import PHMLinear
from peft_core.tuners.vlpet.config import VlpetConfig
from peft_core.tuners.vlpet.sublayer import Sublayer, SublayerLayer


def new_linear(in_features: int, out_features: int, init: str) -> nn.Linear:
    """A Linear with VL-PET's initialisation: ``bert`` N(0, 0.02) weight and zero bias (BART ``_init_weights``),
    ``torch`` PyTorch's default (what upstream T5 leaves on the new Linears)."""
    lin = nn.Linear(in_features, out_features)
    if init == "bert":
        with torch.no_grad():
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)
    return lin


def zero_(module: nn.Module) -> None:
    """Zero every parameter of ``module`` (upstream's ``*_zero_init`` flags zero weight and bias)."""
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()


class MultiheadDownAdapter(nn.Module):
    """VL-PET's lightweight adapter ``dH = up(gelu_new(cat_h down_h(H)))``: N_h Linear(d, r/N_h) whose outputs are
    concatenated, then Linear(r, d). (As a function this equals one Linear(d, r); the heads only shape the
    parameters.) Upstream: ``attn_adapter_multihead_down`` / ``attn_adapter_multihead_up``."""

    def __init__(self, dim: int, r: int, num_heads: int, init: str = "bert") -> None:
        super().__init__()
        if r % num_heads:
            raise ValueError(f"r={r!r} is not allowed with num_heads={num_heads!r}; expected r divisible by num_heads")
        self.down = nn.ModuleList([new_linear(dim, r // num_heads, init) for _ in range(num_heads)])
        self.act = GeluNew()
        self.up = new_linear(r, dim, init)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(torch.cat([down(h) for down in self.down], dim=-1)))


def phm_config(config: VlpetConfig, hidden: int) -> CompacterConfig:
    """The PHM settings of VL-Adapter's Compacter (``single_compacter.sh``): n = ``phm_division``, a rule per layer,
    unfactorised blocks, glorot-uniform blocks, N(0, 0.01) rules, zero biases."""
    return CompacterConfig(bottleneck_dim=hidden, reduction_factor=None, hypercomplex_division=config.phm_division,
                           shared_phm_rule=False, factorized_phm=False, w_init="glorot-uniform", c_init="normal",
                           phm_init_range=0.01, activation="gelu_new", bias=True)


class PhmAdapter(nn.Module):
    """``up(gelu_new(down(h)))`` with PHM (Compacter) projections: ``PHM(x) = x sum_i A_i kron B_i + b``.
    Upstream ``adapters/adapter_modeling.py:HyperComplexAdapter`` (VL_adapter / VL-PET ``--use_compacter``)."""

    def __init__(self, dim_in: int, hidden: int, config: VlpetConfig, dim_out: int | None = None) -> None:
        super().__init__()
        phm = phm_config(config, hidden)
        self.down = PHMLinear(dim_in, hidden, phm)
        self.act = GeluNew()
        self.up = PHMLinear(hidden, dim_in if dim_out is None else dim_out, phm)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(h)))


class LargeGate(nn.Module):
    """``G = sigmoid(up_g(gelu_new(down_g(X))))``, shape (B, L, d); the output is ``H' * G``.
    Upstream ``encoder_*_adapter_gating_large_x_down`` / ``_up``."""

    def __init__(self, dim: int, gate_dim: int, init: str) -> None:
        super().__init__()
        self.down = new_linear(dim, gate_dim, init)
        self.act = GeluNew()
        self.up = new_linear(gate_dim, dim, init)

    def gate(self, x: torch.Tensor, h: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        return torch.sigmoid(self.up(self.act(self.down(x))))

    def forward(self, x: torch.Tensor, h: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        return h * self.gate(x, h, valid)

    def zero_init(self) -> None:
        zero_(self.up)


class MiddleXGate(nn.Module):
    """``G = sigmoid(Linear(d, 1)(X + H'))``, shape (B, L, 1). Upstream ``encoder_*_adapter_gating_middle_xy_add``."""

    def __init__(self, dim: int, init: str) -> None:
        super().__init__()
        self.linear = new_linear(dim, 1, init)

    def gate(self, x: torch.Tensor, h: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        return torch.sigmoid(self.linear(x + h))

    def forward(self, x: torch.Tensor, h: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        return h * self.gate(x, h, valid)

    def zero_init(self) -> None:
        zero_(self.linear)


class SmallGate(nn.Module):
    """``G = mean_L sigmoid(Linear(2d, 1)([X; H']))``, shape (B, 1, 1). Upstream
    ``encoder_*_adapter_gating_small_xy_cat``.

    ``mean="masked"`` averages over the valid (non-padding) positions only; ``mean="upstream"`` averages over all L
    positions as upstream does (``torch.mean(gate, dim=1)``), so padding changes the gate of every token.
    """

    def __init__(self, dim: int, init: str, mean: str) -> None:
        super().__init__()
        self.linear = new_linear(2 * dim, 1, init)
        self.mean = mean

    def gate(self, x: torch.Tensor, h: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        g = torch.sigmoid(self.linear(torch.cat([x, h], dim=-1)))
        if self.mean == "upstream" or valid is None:
            return g.mean(dim=1, keepdim=True)
        m = valid.to(g.dtype).unsqueeze(-1)
        return (g * m).sum(dim=1, keepdim=True) / m.sum(dim=1, keepdim=True).clamp_min(1.0)

    def forward(self, x: torch.Tensor, h: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        return h * self.gate(x, h, valid)

    def zero_init(self) -> None:
        zero_(self.linear)


class MiddleYGate(nn.Module):
    """A per-channel gate from a learned vector z (d,). ``one_plus`` (upstream code,
    ``encoder_*_adapter_gating_middle_ia3_add``): output ``H' + H' * z`` i.e. G = 1 + z, no sigmoid; ``sigmoid``:
    G = sigmoid(z), the gate the paper's figure draws. z starts N(0, 0.02)."""

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        self.z = nn.Parameter(torch.empty(dim))
        with torch.no_grad():
            nn.init.normal_(self.z, std=0.02)
        self.mode = mode

    def gate(self, x: torch.Tensor, h: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        return torch.sigmoid(self.z) if self.mode == "sigmoid" else 1.0 + self.z

    def forward(self, x: torch.Tensor, h: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        if self.mode == "sigmoid":
            return h * torch.sigmoid(self.z)
        return h + h * self.z

    def zero_init(self) -> None:
        zero_(self)


def make_gate(config: VlpetConfig, dim: int) -> nn.Module | None:
    if config.granularity == "large":
        gate: nn.Module = LargeGate(dim, config.gate_dim, config.init)
    elif config.granularity == "middleX":
        gate = MiddleXGate(dim, config.init)
    elif config.granularity == "middleY":
        gate = MiddleYGate(dim, config.middle_y_gate)
    elif config.granularity == "small":
        gate = SmallGate(dim, config.init, config.small_gate_mean)
    else:
        return None
    if config.gate_zero_init:
        gate.zero_init()
    return gate


def make_adapter(config: VlpetConfig, dim: int) -> nn.Module | None:
    if config.adapter_kind == "multihead":
        adapter: nn.Module = MultiheadDownAdapter(dim, config.r, config.num_heads, config.init)
        up = adapter.up
    elif config.adapter_kind == "bottleneck":
        adapter = BottleneckAdapter(dim, config.r, activation="gelu_new", init="bert")
        if config.init == "torch":
            adapter.down.reset_parameters()
            adapter.up.reset_parameters()
        up = adapter.up
    elif config.adapter_kind == "compacter":
        adapter = PhmAdapter(dim, config.r, config)
        up = adapter.up
    else:
        return None
    if config.adapter_up_zero_init:
        zero_(up)
    return adapter


class VlpetSublayerLayer(SublayerLayer):
    """VL-PET on one encoder sublayer: ``H -> s * G(X, H') * H'`` with ``H' = H + adapter(H)``.

    The model then computes ``LN(X + Dropout(s * G * H'))`` (BART, post-LN) or ``X + Dropout(s * G * H')`` (T5,
    pre-LN). Gate and adapter per :mod:`peft_core.tuners.vlpet.layer`; upstream HenryHZY/VL-PET
    ``src/my_transformers/modeling_bart.py:BartEncoderLayer`` and ``modeling_t5.py:T5LayerSelfAttention/T5LayerFF``.
    """

    def __init__(self, sublayer: Sublayer, config: VlpetConfig) -> None:
        super().__init__(sublayer, needs_mask=config.granularity == "small" and config.small_gate_mean == "masked")
        self.adapter = make_adapter(config, sublayer.dim)
        self.gate = make_gate(config, sublayer.dim)
        self.scaling = float(config.scaling)

    def transform(self, x: torch.Tensor, h: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        if self.adapter is not None:
            h = h + self.adapter(h)
        if self.gate is not None:
            h = self.gate(x, h, valid)
        return h * self.scaling


class ValueParallelAdapterLayer(MethodLayer):
    """VL-PET's value parallel adapter on a decoder cross-attention value projection:
    ``V = v_proj(E) + up(gelu_new(down(E)))`` with E the encoder output (the projection's input); no LayerNorm, no
    scaling. ``vpa_kind="compacter"`` makes down / up PHM layers. Upstream ``BartAttentionWithValueAdapter``
    (``attn_value_parallel_adapter``, an AdapterController with ``use_parallel_adapter=True``) and T5Attention
    ``project_vpa``."""

    def __init__(self, host: nn.Linear, config: VlpetConfig) -> None:
        super().__init__()
        if config.vpa_dim is None:
            raise ValueError("vpa_dim=None is not allowed for a value parallel adapter; expected a positive integer")
        if config.vpa_kind == "compacter":
            phm = phm_config(config, config.vpa_dim)
            self.down: nn.Module = PHMLinear(host.in_features, config.vpa_dim, phm)
            self.up: nn.Module = PHMLinear(config.vpa_dim, host.out_features, phm)
        else:
            self.down = new_linear(host.in_features, config.vpa_dim, config.init)
            self.up = new_linear(config.vpa_dim, host.out_features, config.init)
        self.act = GeluNew()
        if config.vpa_up_zero_init:
            zero_(self.up)

    def post(self, host: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        e = primary_input(args, kwargs)
        return map_primary_output(output, lambda v: v + self.up(self.act(self.down(e.to(v.dtype)))))
