"""LoRA layers.

    h = W x + (alpha / r) * B A dropout(x)         (Hu et al. 2021; microsoft/LoRA loralib/layers.py)

Linear and Conv2d hosts get a forward hook adding the low-rank branch (the base weight is never touched until
``merge``). For a fused qkv projection (``out = 3 d``) only the chosen slices of the output receive the update.
``nn.MultiheadAttention`` reads ``in_proj_weight`` and ``out_proj.weight`` directly inside
``F.multi_head_attention_forward``, so there the update is applied through a weight parametrization
``W -> W + (alpha / r) B A``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from peft_core.layer import MethodLayer, add_param_delta, map_primary_output, primary_input, remove_param_delta
from peft_core.tuners.lora.config import LoraConfig


def _init_pair(a: torch.Tensor, b: torch.Tensor, scheme: str, r: int) -> None:
    with torch.no_grad():
        if scheme == "gaussian":
            nn.init.normal_(a, std=1.0 / r)
        else:
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        if scheme == "random":
            nn.init.normal_(b, std=0.02)
        else:
            nn.init.zeros_(b)


def _slice_mask(slices: str | None, out_features: int) -> list[bool]:
    if slices is None:
        return [True]
    if out_features % 3:
        raise ValueError(f"fused_slices={slices!r} needs out_features divisible by 3, got {out_features}")
    return [c in slices for c in "qkv"]


class LoraLinearDelta(nn.Module):
    """``lora_A`` (r x in) and ``lora_B`` (out_enabled x r); ``delta_weight()`` = scaling * B A placed into the
    enabled output slices."""

    def __init__(self, in_features: int, out_features: int, config: LoraConfig) -> None:
        super().__init__()
        self.enabled = _slice_mask(config.fused_slices, out_features)
        self.slice_size = out_features // len(self.enabled)
        self.out_features = out_features
        n_out = self.slice_size * sum(self.enabled)
        self.lora_A = nn.Parameter(torch.empty(config.r, in_features))
        self.lora_B = nn.Parameter(torch.empty(n_out, config.r))
        self.scaling = config.scaling
        self.dropout = nn.Dropout(config.dropout) if config.dropout else nn.Identity()
        _init_pair(self.lora_A, self.lora_B, config.init, config.r)

    def expand(self, partial: torch.Tensor) -> torch.Tensor:
        """Place a tensor over the enabled slices (last dim) into zeros over all output features."""
        if all(self.enabled):
            return partial
        chunks, i = [], 0
        for on in self.enabled:
            if on:
                chunks.append(partial[..., i * self.slice_size : (i + 1) * self.slice_size])
                i += 1
            else:
                chunks.append(partial.new_zeros((*partial.shape[:-1], self.slice_size)))
        return torch.cat(chunks, dim=-1)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scaling)

    def delta_weight(self) -> torch.Tensor:
        return self.expand((self.lora_B @ self.lora_A).T).T * self.scaling


class LoraLinearLayer(MethodLayer):
    """LoRA on an ``nn.Linear`` (or a fused qkv Linear)."""

    def __init__(self, host: nn.Linear, config: LoraConfig) -> None:
        super().__init__()
        self.lora = LoraLinearDelta(host.in_features, host.out_features, config)

    def post(self, host: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        x = primary_input(args, kwargs)
        return map_primary_output(output, lambda out: out + self.lora.branch(x.to(out.dtype)))

    def can_merge(self) -> bool:
        return True

    def merge(self, host: nn.Module) -> None:
        with torch.no_grad():
            host.weight += self.lora.delta_weight().to(host.weight.dtype)

    def unmerge(self, host: nn.Module) -> None:
        with torch.no_grad():
            host.weight -= self.lora.delta_weight().to(host.weight.dtype)


class LoraConv2dLayer(MethodLayer):
    """LoRA on ``nn.Conv2d``: A is a conv with the host's kernel, stride, padding and dilation into r channels,
    B a 1x1 conv back to the output channels (as Hugging Face PEFT). Grouped convolutions are rejected."""

    def __init__(self, host: nn.Conv2d, config: LoraConfig) -> None:
        super().__init__()
        if host.groups != 1:
            raise ValueError(f"LoRA on a grouped Conv2d (groups={host.groups}) is not supported; expected groups=1")
        self.lora_A = nn.Conv2d(host.in_channels, config.r, host.kernel_size, host.stride, host.padding,
                                host.dilation, bias=False, padding_mode=host.padding_mode)
        self.lora_B = nn.Conv2d(config.r, host.out_channels, 1, bias=False)
        self.scaling = config.scaling
        self.dropout = nn.Dropout(config.dropout) if config.dropout else nn.Identity()
        _init_pair(self.lora_A.weight, self.lora_B.weight, config.init, config.r)

    def post(self, host: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        x = primary_input(args, kwargs)
        return output + self.lora_B(self.lora_A(self.dropout(x))) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        return torch.einsum("or,rikl->oikl", self.lora_B.weight[:, :, 0, 0], self.lora_A.weight) * self.scaling

    def can_merge(self) -> bool:
        return True

    def merge(self, host: nn.Module) -> None:
        with torch.no_grad():
            host.weight += self.delta_weight().to(host.weight.dtype)

    def unmerge(self, host: nn.Module) -> None:
        with torch.no_grad():
            host.weight -= self.delta_weight().to(host.weight.dtype)


class LoraMultiheadAttentionLayer(MethodLayer):
    """LoRA on ``nn.MultiheadAttention``: ``in_proj`` (with ``fused_slices``, default "qkv") and ``out_proj``,
    applied as parametrizations of ``in_proj_weight`` and ``out_proj.weight``."""

    def __init__(self, host: nn.MultiheadAttention, config: LoraConfig) -> None:
        super().__init__()
        if not host._qkv_same_embed_dim:
            raise ValueError("LoRA on nn.MultiheadAttention with kdim/vdim != embed_dim is not supported")
        d = host.embed_dim
        in_cfg = config.replace(fused_slices=config.fused_slices or "qkv")
        self.in_proj = LoraLinearDelta(d, 3 * d, in_cfg)
        self.out_proj = LoraLinearDelta(d, d, config.replace(fused_slices=None))

    def attach(self, host: nn.Module) -> None:
        add_param_delta(host, "in_proj_weight", self, self.in_proj.delta_weight)
        add_param_delta(host.out_proj, "weight", self, self.out_proj.delta_weight)

    def detach(self, host: nn.Module) -> None:
        remove_param_delta(host, "in_proj_weight", self)
        remove_param_delta(host.out_proj, "weight", self)

    def can_merge(self) -> bool:
        return True

    def merge(self, host: nn.Module) -> None:
        with torch.no_grad():
            host.parametrizations.in_proj_weight.original += self.in_proj.delta_weight()
            host.out_proj.parametrizations.weight.original += self.out_proj.delta_weight()

    def unmerge(self, host: nn.Module) -> None:
        with torch.no_grad():
            host.parametrizations.in_proj_weight.original -= self.in_proj.delta_weight()
            host.out_proj.parametrizations.weight.original -= self.out_proj.delta_weight()
