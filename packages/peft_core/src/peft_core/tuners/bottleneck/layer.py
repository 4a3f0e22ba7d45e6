"""Bottleneck adapter layer.

    f(z) = s * W_up(dropout(act(W_down(LN_in(z)))))    (then LN_out if layer_norm == "out")
    serial:   out' = out + f(out)        Houlsby et al. 2019 (two per layer), Pfeiffer et al. 2021 (after the FFN)
    parallel: out' = out + f(x)          He et al. 2022; AdaptFormer (Chen et al. 2022) with s = 0.1

Upstream: V-PETL ``models/video_swin_transformer_patt.py:Adapter`` (== AdaptFormer ``Adapter``);
pi-Tuning ``OFA/models/ofa/unify_transformer_layer.py:Adapter_Layer``; VL-Adapter ``adapters/adapter_modeling.py``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from peft_core.layer import MethodLayer, map_primary_output, primary_input
from peft_core.tuners.activations import make_activation
from peft_core.tuners.bottleneck.config import BottleneckConfig


class BottleneckAdapter(nn.Module):
    """``s * up(dropout(act(down(LN(z)))))`` as a plain module (reused by other methods)."""

    def __init__(self, dim: int, hidden: int, *, activation: str = "relu", init: str = "bert", scale: float = 1.0,
                 learnable_scale: bool = False, layer_norm: str = "none", dropout: float = 0.0,
                 out_dim: int | None = None) -> None:
        super().__init__()
        out_dim = dim if out_dim is None else out_dim
        self.layer_norm = layer_norm
        self.norm = nn.LayerNorm(dim if layer_norm == "in" else out_dim) if layer_norm != "none" else None
        self.down = nn.Linear(dim, hidden)
        self.act = make_activation(activation)
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(hidden, out_dim)
        if learnable_scale:
            self.scale = nn.Parameter(torch.full((1,), float(scale)))
        else:
            self.scale = float(scale)
        init_bottleneck(self.down, self.up, init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.norm(z) if self.layer_norm == "in" else z
        out = self.up(self.dropout(self.act(self.down(h)))) * self.scale
        if self.layer_norm == "out":
            out = self.norm(out)
        return out


def init_bottleneck(down: nn.Linear, up: nn.Linear, scheme: str) -> None:
    """Initialise a down/up pair: ``bert`` N(0, 0.02) both; ``zero_up`` N(0, 0.02) down, zero up; ``lora``
    kaiming-uniform down, zero up (V-PETL / AdaptFormer ``init_option='lora'``). Biases are zero in all schemes."""
    with torch.no_grad():
        if scheme == "lora":
            nn.init.kaiming_uniform_(down.weight, a=math.sqrt(5))
        else:
            nn.init.normal_(down.weight, std=0.02)
        if scheme == "bert":
            nn.init.normal_(up.weight, std=0.02)
        else:
            nn.init.zeros_(up.weight)
        for lin in (down, up):
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)


def feature_dim(module: nn.Module, *, output: bool) -> int:
    """Hidden size entering (``output=False``) or leaving (``output=True``) a target module.

    A Linear-like module answers from its own attributes; a container (an FFN block) from its first Linear's input
    or its last Linear's output.
    """
    own = ("out_features", "embed_dim", "hidden_size") if output else ("in_features", "embed_dim", "hidden_size")
    for attr in (*own, "normalized_shape"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
        if isinstance(value, tuple | list) and len(value) == 1:
            return int(value[0])
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1].out_features if output else linears[0].in_features
    raise ValueError(f"cannot infer the feature size of a {type(module).__name__}; expected a Linear-like module")


class BottleneckLayer(MethodLayer):
    """A :class:`BottleneckAdapter` applied serially to, or in parallel with, its host module."""

    def __init__(self, host: nn.Module, config: BottleneckConfig) -> None:
        super().__init__()
        self.mode = config.resolved_mode
        dim_in = feature_dim(host, output=self.mode == "serial")
        dim_out = feature_dim(host, output=True)
        hidden = config.bottleneck_dim or max(1, dim_in // int(config.reduction_factor))
        self.residual = config.residual
        self.adapter = BottleneckAdapter(
            dim_in, hidden, activation=config.activation, init=config.init, scale=config.scale,
            learnable_scale=config.learnable_scale, layer_norm=config.layer_norm, dropout=config.dropout,
            out_dim=dim_out,
        )

    def post(self, host: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        if self.mode == "serial":
            if self.residual:
                return map_primary_output(output, lambda out: out + self.adapter(out))
            return map_primary_output(output, self.adapter)
        x = primary_input(args, kwargs)
        return map_primary_output(output, lambda out: out + self.adapter(x))
