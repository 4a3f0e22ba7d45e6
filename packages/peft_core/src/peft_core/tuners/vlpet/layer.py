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

Gate statistics (upstream ``--use_store_gate_large`` saved the raw G of the first encoder self-attention for one batch
and exited, for the paper's heat maps): :meth:`VlpetSublayerLayer.record_gates` switches on a :class:`GateRecorder`
that accumulates G over forwards (count, mean, std, min, max, per-channel mean) over the non-padding tokens. Off by
default; when off nothing is computed or hooked.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

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


class GateRecorder:
    """Running statistics of the gate values G of one sublayer over forwards.

    G is viewed as rows of channels: (B, L, d) large -> B*L rows of d; (B, L, 1) middleX -> B*L rows of 1; (B, 1, 1)
    small -> B rows of 1; (d,) middleY -> one row of d (per forward). With a padding mask ``valid`` (B, L), rows of
    padding tokens are left out. Accumulated in float64 on the CPU side: ``count`` elements, their sum, sum of squares,
    min and max, and the per-channel sum over rows (the channel profile of the gate).
    """

    def __init__(self) -> None:
        self.forwards = 0
        self.rows = 0
        self.count = 0
        self.total = 0.0
        self.total_sq = 0.0
        self.minimum = math.inf
        self.maximum = -math.inf
        self.channel_sum: torch.Tensor | None = None

    @torch.no_grad()
    def update(self, gate: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        g = gate.detach().to(torch.float64)
        if g.dim() == 3 and valid is not None and g.shape[:2] == valid.shape and g.shape[1] > 1:
            g = g[valid.to(g.device)]
        rows = g.reshape(-1, g.shape[-1])
        if rows.numel() == 0:
            return
        self.forwards += 1
        self.rows += rows.shape[0]
        self.count += rows.numel()
        self.total += float(rows.sum())
        self.total_sq += float((rows * rows).sum())
        self.minimum = min(self.minimum, float(rows.min()))
        self.maximum = max(self.maximum, float(rows.max()))
        channel = rows.sum(dim=0).cpu()
        self.channel_sum = channel if self.channel_sum is None else self.channel_sum + channel

    def summary(self) -> dict[str, Any]:
        """``{"forwards", "rows", "count", "mean", "std", "min", "max", "channel_mean": list}`` (empty if no data)."""
        if self.count == 0 or self.channel_sum is None:
            return {"forwards": 0, "rows": 0, "count": 0}
        mean = self.total / self.count
        var = max(self.total_sq / self.count - mean * mean, 0.0)
        return {"forwards": self.forwards, "rows": self.rows, "count": self.count, "mean": mean,
                "std": math.sqrt(var), "min": self.minimum, "max": self.maximum,
                "channel_mean": (self.channel_sum / self.rows).tolist()}


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
        object.__setattr__(self, "_layer_module", sublayer.mask_source)
        self.gate_recorder: GateRecorder | None = None
        self._record_handle: RemovableHandle | None = None

    def transform(self, x: torch.Tensor, h: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        if self.adapter is not None:
            h = h + self.adapter(h)
        if self.gate is not None:
            if self.gate_recorder is not None:
                with torch.no_grad():
                    self.gate_recorder.update(self.gate.gate(x, h, valid), valid)
            h = self.gate(x, h, valid)
        return h * self.scaling

    # ------------------------------------------------------------------------------------------- gate statistics
    def record_gates(self, enabled: bool = True) -> None:
        """Start (with a fresh :class:`GateRecorder`) or stop recording this sublayer's gate values.

        While recording, the gate is evaluated a second time under ``no_grad`` (the output is unchanged) and the
        encoder layer's padding mask is read so padding tokens are left out of the statistics.
        """
        if not enabled:
            self.gate_recorder = None
            if self._record_handle is not None:
                self._record_handle.remove()
                if self._record_handle in self._extra_handles:
                    self._extra_handles.remove(self._record_handle)
                self._record_handle = None
                self._valid = None
            return
        if self.gate is None:
            raise ValueError(f"{type(self).__name__} ({self.kind}): granularity 'none' has no gate to record")
        self.gate_recorder = GateRecorder()
        if self._mask_source is None and self._record_handle is None:
            self._record_handle = self._layer_module.register_forward_pre_hook(self._capture_mask_for_gates,
                                                                               with_kwargs=True)
            self._extra_handles.append(self._record_handle)

    def detach(self, host: nn.Module) -> None:
        super().detach(host)
        self.gate_recorder = None
        self._record_handle = None

    def _capture_mask_for_gates(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        try:
            self._capture_mask(module, args, kwargs)
        except (TypeError, ValueError):  # a mask that is not a tensor: statistics include padding
            self._valid = None

    def gate_statistics(self) -> dict[str, Any]:
        """The recorder's :meth:`GateRecorder.summary` (``{}`` when not recording)."""
        return self.gate_recorder.summary() if self.gate_recorder is not None else {}


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
