"""Parameter-delta layers for BitFit and LayerNorm tuning.

Instead of training the host's own bias / gain in place, a zero-initialised delta is added in a forward hook:

    Linear / Conv:  y' = y + db                      (== training b, same gradient; also a NEW bias on a Linear
                                                      or an RMS norm without one, ``add_missing``)
    LayerNorm:      y' = y + dg * norm(x) + db       (== training g and b; norm(x) recomputed from the input)
    RMSNorm (T5):   y' = y + dg * x / rms(x)

so the base weights stay bit-identical, the adapter checkpoint holds only the deltas, ``merge`` adds them into the
host, and removal restores the original model. ``nn.MultiheadAttention``'s ``in_proj_bias`` is reached through a
parametrization (see :mod:`peft_core.layer`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from peft_core.layer import MethodLayer, add_param_delta, map_primary_output, primary_input, remove_param_delta


def _channel_view(delta: torch.Tensor, host: nn.Module, out: torch.Tensor) -> torch.Tensor:
    if isinstance(host, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d):
        return delta.view(1, -1, *([1] * (out.dim() - 2)))
    return delta


def _norm_eps(host: nn.Module) -> float:
    for attr in ("eps", "variance_epsilon"):
        if hasattr(host, attr):
            return float(getattr(host, attr))
    return 1e-6


def is_rms_norm(host: nn.Module) -> bool:
    return "RMSNorm" in type(host).__name__ or type(host).__name__ == "T5LayerNorm"


class BiasDeltaLayer(MethodLayer):
    """``y + db`` for a module with an output bias; ``nn.MultiheadAttention`` biases via parametrizations."""

    def __init__(self, host: nn.Module) -> None:
        super().__init__()
        self.is_mha = isinstance(host, nn.MultiheadAttention)
        if self.is_mha:
            self.in_proj_bias = nn.Parameter(torch.zeros_like(host.in_proj_bias))
            self.out_proj_bias = nn.Parameter(torch.zeros_like(host.out_proj.bias))
        else:
            size = bias_size(host)
            self.bias = nn.Parameter(torch.zeros(size))

    def detach(self, host: nn.Module) -> None:
        if self.is_mha:
            remove_param_delta(host, "in_proj_bias", self)
            remove_param_delta(host.out_proj, "bias", self)
        else:
            super().detach(host)

    def post(self, host: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        return map_primary_output(output, lambda out: out + _channel_view(self.bias, host, out).to(out.dtype))

    def attach(self, host: nn.Module) -> None:
        self.host_has_bias = isinstance(getattr(host, "bias", None), torch.Tensor) or self.is_mha
        if self.is_mha:
            add_param_delta(host, "in_proj_bias", self, lambda: self.in_proj_bias)
            add_param_delta(host.out_proj, "bias", self, lambda: self.out_proj_bias)
        else:
            super().attach(host)

    def can_merge(self) -> bool:
        return not self.is_mha and self.host_has_bias

    def merge(self, host: nn.Module) -> None:
        with torch.no_grad():
            host.bias += self.bias

    def unmerge(self, host: nn.Module) -> None:
        with torch.no_grad():
            host.bias -= self.bias


def bias_size(host: nn.Module) -> int:
    for attr in ("out_features", "out_channels", "num_features"):
        if isinstance(getattr(host, attr, None), int):
            return int(getattr(host, attr))
    if isinstance(getattr(host, "normalized_shape", None), tuple):
        return int(host.normalized_shape[-1])
    bias = getattr(host, "bias", None)
    if isinstance(bias, torch.Tensor):
        return bias.numel()
    weight = getattr(host, "weight", None)
    if is_rms_norm(host) and isinstance(weight, torch.Tensor):
        return weight.numel()
    raise ValueError(f"cannot tell the output size of a {type(host).__name__}")


class NormDeltaLayer(MethodLayer):
    """``y + dg * norm(x) + db`` for LayerNorm, ``y + dg * x / rms(x)`` for RMS norms (no bias)."""

    def __init__(self, host: nn.Module, bias: bool) -> None:
        super().__init__()
        weight = getattr(host, "weight", None)
        if not isinstance(weight, torch.Tensor):
            raise ValueError(f"{type(host).__name__} has no gain to tune")
        self.rms = is_rms_norm(host)
        self.gain = nn.Parameter(torch.zeros_like(weight))
        has_bias = isinstance(getattr(host, "bias", None), torch.Tensor)
        self.bias = nn.Parameter(torch.zeros_like(weight)) if bias and (has_bias or not self.rms) else None

    def _normalized(self, host: nn.Module, x: torch.Tensor) -> torch.Tensor:
        eps = _norm_eps(host)
        if self.rms:
            xf = x.float()
            return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        return F.layer_norm(x, host.normalized_shape, None, None, eps)

    def post(self, host: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        x = primary_input(args, kwargs)
        delta = self.gain * self._normalized(host, x)
        if self.bias is not None:
            delta = delta + self.bias
        return map_primary_output(output, lambda out: out + delta.to(out.dtype))

    def can_merge(self) -> bool:
        return True

    def merge(self, host: nn.Module) -> None:
        with torch.no_grad():
            host.weight += self.gain
            if self.bias is not None:
                host.bias += self.bias

    def unmerge(self, host: nn.Module) -> None:
        with torch.no_grad():
            host.weight -= self.gain
            if self.bias is not None:
                host.bias -= self.bias
