"""Builders of UniPT's trainable sub-modules, laid out as upstream's ``nn.Sequential`` (same child indices).

Keeping upstream's child indices (``[Linear, LayerNorm]``, ``[ReLU, Linear]``, ``[Conv, BN]`` ...) lets an upstream
state dict load by renaming prefixes only (:mod:`peft_core.tuners.unipt.convert`).
"""

from __future__ import annotations

from torch import nn


def make_downsample(kind: str, in_dim: int, d: int, *, ln_eps: float) -> nn.Sequential:
    """``D_i``: ``linear_ln`` = [Linear(C,d), LN(d)] (VSE text, CLIP-ViL, MDETR); ``relu_linear`` = [ReLU, Linear(C,d)]
    (CLIP4Clip); ``conv_bn`` = [Conv1x1(C,d), BatchNorm2d(d)] (VSE ResNeXt)."""
    if kind == "linear_ln":
        return nn.Sequential(nn.Linear(in_dim, d), nn.LayerNorm(d, eps=ln_eps))
    if kind == "relu_linear":
        return nn.Sequential(nn.ReLU(), nn.Linear(in_dim, d))
    if kind == "conv_bn":
        return nn.Sequential(nn.Conv2d(in_dim, d, kernel_size=1, stride=1), nn.BatchNorm2d(d))
    raise ValueError(f"downsample={kind!r} is not allowed; expected one of ['linear_ln', 'relu_linear', 'conv_bn']")


def make_projection(kind: str, d: int, hidden: int, *, ln_eps: float) -> nn.Module:
    """``Proj``: ``linear_ln`` = [Linear(d,d), LN] (VSE text); ``mlp_ln`` = [Linear(d,E), ReLU, Linear(E,d), LN]
    (CLIP-ViL, MDETR); ``conv_bn`` = [Conv1x1(d,d), BN] (VSE ResNeXt); ``none`` = identity (CLIP4Clip)."""
    if kind == "linear_ln":
        return nn.Sequential(nn.Linear(d, d), nn.LayerNorm(d, eps=ln_eps))
    if kind == "mlp_ln":
        return nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, d), nn.LayerNorm(d, eps=ln_eps))
    if kind == "conv_bn":
        return nn.Sequential(nn.Conv2d(d, d, kernel_size=1, stride=1), nn.BatchNorm2d(d))
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"projection={kind!r} is not allowed; expected one of ['linear_ln', 'mlp_ln', 'conv_bn', 'none']")


def make_up(kind: str, d: int, out_dim: int, *, ln_eps: float) -> nn.Module:
    """``Up``: ``relu_linear`` = [ReLU, Linear(d,E)] (VSE text, CLIP4Clip); ``linear`` = [Linear(d,E)] (CLIP-ViL);
    ``relu_linear_ln`` = [ReLU, Linear(d,E), LN(E)] (MDETR decoder); ``relu_conv`` = [ReLU, Conv1x1(d,E)] (VSE
    ResNeXt); ``none`` = identity (MDETR encoder)."""
    if kind == "relu_linear":
        return nn.Sequential(nn.ReLU(), nn.Linear(d, out_dim))
    if kind == "linear":
        return nn.Sequential(nn.Linear(d, out_dim))
    if kind == "relu_linear_ln":
        return nn.Sequential(nn.ReLU(), nn.Linear(d, out_dim), nn.LayerNorm(out_dim, eps=ln_eps))
    if kind == "relu_conv":
        return nn.Sequential(nn.ReLU(), nn.Conv2d(d, out_dim, kernel_size=1, stride=1))
    if kind == "none":
        return nn.Identity()
    raise ValueError(
        f"up={kind!r} is not allowed; expected one of ['relu_linear', 'linear', 'relu_linear_ln', 'relu_conv', 'none']"
    )


def make_identity_conv(anchor_channels: int, target_channels: int) -> nn.Sequential:
    """[Conv1x1(C_last, C_i), ReLU]: the guide map of the CNN spatial alignment (upstream ``identity_layers[i]``)."""
    return nn.Sequential(nn.Conv2d(anchor_channels, target_channels, kernel_size=1, stride=1), nn.ReLU())


def make_crosser(d: int, *, ln_eps: float) -> nn.Sequential:
    """[Linear(d,d), LN(d)] applied to a target's interaction with a context (MDETR ``side_projection_crosser``)."""
    return nn.Sequential(nn.Linear(d, d), nn.LayerNorm(d, eps=ln_eps))


def init_side(module: nn.Module, kind: str, *, std: float = 0.02) -> None:
    """Re-initialise the side network as its upstream host does.

    ``default``: PyTorch's own init, untouched (VSE-infty, CLIP4Clip build the side after their ``init_weights``).
    ``xavier_uniform``: ``xavier_uniform_`` on every parameter with ``dim > 1`` (MDETR ``Transformer.__init__``).
    ``bert_normal``: Linear weight ~ N(0, std), bias 0, LayerNorm 1/0 (CLIP-ViL ``init_bert_weights``).
    """
    if kind == "default":
        return
    if kind == "xavier_uniform":
        for p in module.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        return
    if kind == "bert_normal":
        for m in module.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, mean=0.0, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        return
    raise ValueError(f"init={kind!r} is not allowed; expected one of ['default', 'xavier_uniform', 'bert_normal']")
