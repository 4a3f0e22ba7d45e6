"""Activation functions by name (the names upstream configs use)."""

from __future__ import annotations

import math

import torch
from torch import nn

from peft_core.config import check_choice


class GeluNew(nn.Module):
    """The tanh approximation of GELU (``gelu_new`` in transformers; VL-Adapter and VL-PET adapters use it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


_ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "gelu_new": GeluNew,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
    "identity": nn.Identity,
}
ACTIVATIONS = tuple(_ACTIVATIONS)


def make_activation(name: str) -> nn.Module:
    check_choice("activation", name, ACTIVATIONS)
    return _ACTIVATIONS[name]()

