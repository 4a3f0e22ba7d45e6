"""Video Swin Transformer (Liu et al., CVPR 2022), written for parameter-efficient transfer learning.

    x (B, 3, T, H, W) -> PatchEmbed3D (Conv3d, patch 2x4x4) -> 4 stages of shifted-window blocks (PatchMerging
    between stages) -> LayerNorm -> head

Block (pre-norm; W-MSA in even blocks, SW-MSA with a cyclic shift of half a window in odd blocks):

    z = x + DropPath(W-MSA(LN1(x)))          W-MSA: per window, softmax((q s) k^T + B_rel + M_shift) v, then proj
    y = z + DropPath(MLP(LN2(z)))            MLP: fc1 -> GELU -> fc2

Module and parameter names follow the official checkpoints (``patch_embed.proj``, ``layers.i.blocks.j.attn.qkv``,
``...attn.relative_position_bias_table``, ``layers.i.downsample.reduction``, ``norm``), so they load after the
``backbone.`` prefix is stripped (:mod:`video_swin_vpetl.models.checkpoint`). :class:`WindowAttention3D` exposes the
attributes peft_core's methods duck-type on (``qkv``, ``proj``, ``num_heads``, ``scale``,
``relative_position_bias_table``, ``relative_position_index``, ``forward(x, mask=None)``): PATT hooks ``attn.qkv``,
window prefix tuning overrides the attention's forward, AdaptFormer runs beside ``mlp``, LoRA targets ``attn.qkv``.
No method is built in: the V-PETL adapters are attached by peft_core, and attention always applies the relative
position bias, the shift mask and the softmax (upstream skipped all three unless ``att_prefix_mode`` was one of a
few PATT modes: bruceyo/V-PETL@661198dd38:models/video_swin_transformer_patt.py:WindowAttention3D.forward).

Upstream: SwinTransformer/Video-Swin-Transformer mmaction/models/backbones/swin_transformer.py:SwinTransformer3D;
bruceyo/V-PETL@661198dd38:models/video_swin_transformer_patt.py:SwinTransformer3D (V-PETL head).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from video_swin_vpetl.models.heads import make_head
from video_swin_vpetl.models.windows import (
    Size3,
    get_window_size,
    relative_position_index,
    shifted_window_mask,
    window_partition,
    window_reverse,
)


class DropPath(nn.Module):
    """Stochastic depth per sample: ``x * Bernoulli(1 - p) / (1 - p)`` in training, identity in eval."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p:.3f}"


class Mlp(nn.Module):
    """``fc2(drop(GELU(fc1(x))))`` followed by dropout (official key names ``fc1``, ``fc2``)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class WindowAttention3D(nn.Module):
    """Multi-head self-attention inside 3D windows with a relative position bias.

        q, k, v = split(qkv(x));  A = softmax((q * scale) k^T + B + M);  out = proj_drop(proj(attn_drop(A) v))

    ``x``: ``(B * nW, N, C)`` window tokens; ``mask``: ``(nW, N, N)`` additive shift mask or None.
    ``B = table[relative_position_index[:N, :N]]`` (``heads, N, N``): the index is built for the configured window
    and sliced to the N tokens of the window in use, as upstream. That is exact when the window is clamped along
    time only (every official configuration: 224 px and any clip length); a window clamped in space (maps smaller
    than the window) reuses the leading block of the index, exactly as the upstream model does.
    """

    def __init__(self, dim: int, window_size: Size3, num_heads: int, qkv_bias: bool = True,
                 qk_scale: float | None = None, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.dim = dim
        self.window_size = tuple(window_size)
        self.num_heads = num_heads
        self.scale = float(qk_scale or (dim // num_heads) ** -0.5)
        wd, wh, ww = self.window_size
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * wd - 1) * (2 * wh - 1) * (2 * ww - 1), num_heads))
        self.register_buffer("relative_position_index", relative_position_index(self.window_size))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_position_bias(self, n: int) -> torch.Tensor:
        """``(heads, n, n)`` bias for a window of ``n`` tokens."""
        index = self.relative_position_index[:n, :n].reshape(-1)
        return self.relative_position_bias_table[index].reshape(n, n, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b_, n, c = x.shape
        qkv = self.qkv(x).reshape(b_, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B_, heads, N, d)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn + self.relative_position_bias(n).unsqueeze(0).to(attn.dtype)
        if mask is not None:
            num_windows = mask.shape[0]
            attn = attn.view(-1, num_windows, self.num_heads, n, n) + mask[None, :, None].to(attn.dtype)
            attn = attn.view(-1, self.num_heads, n, n)
        attn = self.attn_drop(attn.softmax(dim=-1))
        out = (attn @ v).transpose(1, 2).reshape(b_, n, c)
        return self.proj_drop(self.proj(out))


class SwinTransformerBlock3D(nn.Module):
    """One (shifted-)window block: ``x + DropPath(W-MSA(LN1 x))`` then ``+ DropPath(MLP(LN2 .))``."""

    def __init__(self, dim: int, num_heads: int, window_size: Size3, shift_size: Size3, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, qk_scale: float | None = None, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.window_size = tuple(window_size)
        self.shift_size = tuple(shift_size)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention3D(dim, self.window_size, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def _window_attention(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, d, h, w, _ = x.shape
        window, shift = get_window_size((d, h, w), self.window_size, self.shift_size)
        x = self.norm1(x)
        pads = [(-n) % win for n, win in zip((d, h, w), window, strict=True)]
        x = F.pad(x, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
        _, dp, hp, wp, _ = x.shape
        shifted = any(s > 0 for s in shift)
        if shifted:
            x = torch.roll(x, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
        windows = self.attn(window_partition(x, window), mask=mask if shifted else None)
        x = window_reverse(windows, window, b, dp, hp, wp)
        if shifted:
            x = torch.roll(x, shifts=shift, dims=(1, 2, 3))
        return x[:, :d, :h, :w].contiguous()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``x``: ``(B, D, H, W, C)``; ``mask``: the stage's shift mask (used only if this block shifts)."""
        x = x + self.drop_path(self._window_attention(x, mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2 x 2 spatial merge: ``reduction(LN(cat[x(0,0), x(1,0), x(0,1), x(1,1)]))``, C -> 2C (time untouched)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w, _ = x.shape
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        parts = [x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]]
        return self.reduction(self.norm(torch.cat(parts, dim=-1)))


class BasicLayer(nn.Module):
    """One stage: ``depth`` blocks alternating shift 0 / half a window, then an optional :class:`PatchMerging`."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: Size3, mlp_ratio: float, qkv_bias: bool,
                 qk_scale: float | None, drop: float, attn_drop: float, drop_path: Sequence[float],
                 downsample: bool, use_checkpoint: bool = False) -> None:
        super().__init__()
        self.window_size = tuple(window_size)
        self.shift_size = tuple(w // 2 for w in window_size)
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            SwinTransformerBlock3D(dim, num_heads, self.window_size, (0, 0, 0) if i % 2 == 0 else self.shift_size,
                                   mlp_ratio, qkv_bias, qk_scale, drop, attn_drop, drop_path[i])
            for i in range(depth))
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, D, H, W)`` -> ``(B, C', D, H', W')``."""
        _, _, d, h, w = x.shape
        window, shift = get_window_size((d, h, w), self.window_size, self.shift_size)
        padded = [math.ceil(n / win) * win for n, win in zip((d, h, w), window, strict=True)]
        mask = shifted_window_mask(*padded, window, shift, device=x.device) if any(shift) else None
        x = x.permute(0, 2, 3, 4, 1)
        for block in self.blocks:
            if self.use_checkpoint and x.requires_grad:
                x = checkpoint(block, x, mask, use_reentrant=False)
            else:
                x = block(x, mask)
        if self.downsample is not None:
            x = self.downsample(x)
        return x.permute(0, 4, 1, 2, 3)


class PatchEmbed3D(nn.Module):
    """Pad to whole patches, ``Conv3d(3, C, kernel=stride=patch)``, optional LayerNorm over channels."""

    def __init__(self, patch_size: Size3, in_chans: int, embed_dim: int, norm: bool) -> None:
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.norm = nn.LayerNorm(embed_dim) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, d, h, w = x.shape
        pd, ph, pw = ((-n) % p for n, p in zip((d, h, w), self.patch_size, strict=True))
        x = self.proj(F.pad(x, (0, pw, 0, ph, 0, pd)))
        if self.norm is not None:
            x = self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)
        return x


@dataclass
class VideoSwinConfig:
    """Architecture of a Video Swin Transformer plus its head (names as in the official configs)."""

    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    patch_size: tuple[int, int, int] = (2, 4, 4)
    window_size: tuple[int, int, int] = (8, 7, 7)
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    qk_scale: float | None = None
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.2
    patch_norm: bool = True
    in_chans: int = 3
    num_classes: int = 400
    head: str = "vpetl"
    head_dropout: float | None = None
    use_checkpoint: bool = False

    def __post_init__(self) -> None:
        self.depths = tuple(int(v) for v in self.depths)
        self.num_heads = tuple(int(v) for v in self.num_heads)
        self.patch_size = tuple(int(v) for v in self.patch_size)  # type: ignore[assignment]
        self.window_size = tuple(int(v) for v in self.window_size)  # type: ignore[assignment]
        if len(self.depths) != len(self.num_heads):
            raise ValueError(f"depths={self.depths} and num_heads={self.num_heads}: expected the same length")
        if len(self.patch_size) != 3 or len(self.window_size) != 3:
            raise ValueError(f"patch_size={self.patch_size}, window_size={self.window_size}: expected 3 values each")

    def to_dict(self) -> dict:
        return asdict(self)


class VideoSwinTransformer(nn.Module):
    """Video Swin backbone (``patch_embed``, ``layers``, ``norm``) and a classification ``head``.

    ``forward_features``: ``(B, 3, T, H, W)`` -> ``(B, F, T / 2, H / 32, W / 32)`` (after the final LayerNorm);
    ``forward``: logits ``(B, num_classes)``.
    """

    def __init__(self, config: VideoSwinConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.patch_embed = PatchEmbed3D(c.patch_size, c.in_chans, c.embed_dim, c.patch_norm)
        self.pos_drop = nn.Dropout(c.drop_rate)
        total = sum(c.depths)
        rates = [c.drop_path_rate * i / max(total - 1, 1) for i in range(total)]  # linspace(0, rate, total)
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(c.depths, c.num_heads, strict=True)):
            start = sum(c.depths[:i])
            self.layers.append(BasicLayer(
                c.embed_dim * 2**i, depth, heads, c.window_size, c.mlp_ratio, c.qkv_bias, c.qk_scale, c.drop_rate,
                c.attn_drop_rate, rates[start : start + depth], downsample=i < len(c.depths) - 1,
                use_checkpoint=c.use_checkpoint))
        self.num_features = c.embed_dim * 2 ** (len(c.depths) - 1)
        self.norm = nn.LayerNorm(self.num_features)
        self.apply(_init_weights)
        self.head = make_head(c.head, self.num_features, c.num_classes, c.head_dropout)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pos_drop(self.patch_embed(x))
        for layer in self.layers:
            x = layer(x.contiguous())
        return self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def _init_weights(module: nn.Module) -> None:
    """Official init: Linear weights trunc-normal(0.02), biases 0; LayerNorm weight 1, bias 0."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


ARCHS: dict[str, dict] = {
    "video-swin-t": {"embed_dim": 96, "depths": (2, 2, 6, 2), "num_heads": (3, 6, 12, 24), "drop_path_rate": 0.1},
    "video-swin-s": {"embed_dim": 96, "depths": (2, 2, 18, 2), "num_heads": (3, 6, 12, 24), "drop_path_rate": 0.2},
    "video-swin-b": {"embed_dim": 128, "depths": (2, 2, 18, 2), "num_heads": (4, 8, 16, 32), "drop_path_rate": 0.3},
    # a two-stage model for tests and the demo (8 x 32 x 32 clips)
    "video-swin-micro": {"embed_dim": 32, "depths": (2, 2), "num_heads": (2, 4), "window_size": (2, 4, 4),
                         "drop_path_rate": 0.0},
}
"""Architectures by name (patch 2x4x4, window 8x7x7 unless given). Official K400 drop-path rates; V-PETL uses 0.4."""

BACKBONE_NAMES = {"video-swin-t": "video-swin-tiny", "video-swin-s": "video-swin-small",
                  "video-swin-b": "video-swin-base", "video-swin-micro": "video-swin-micro"}
"""Backbone names used in run results (``video-swin-base`` is the name of shared/baselines/v_petl.toml)."""


def create_model(arch: str = "video-swin-b", **overrides: object) -> VideoSwinTransformer:
    """Build architecture ``arch`` (see :data:`ARCHS`) with ``overrides`` of :class:`VideoSwinConfig` fields."""
    if arch not in ARCHS:
        raise ValueError(f"arch={arch!r} is not known; expected one of {sorted(ARCHS)}")
    known = set(VideoSwinConfig.__dataclass_fields__)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown model option(s) {unknown}; expected some of {sorted(known)}")
    return VideoSwinTransformer(VideoSwinConfig(**{**ARCHS[arch], **overrides}))


def video_swin_t(**overrides: object) -> VideoSwinTransformer:
    """Swin-T: embed 96, depths 2-2-6-2, heads 3-6-12-24 (28M)."""
    return create_model("video-swin-t", **overrides)


def video_swin_s(**overrides: object) -> VideoSwinTransformer:
    """Swin-S: embed 96, depths 2-2-18-2, heads 3-6-12-24 (50M)."""
    return create_model("video-swin-s", **overrides)


def video_swin_b(**overrides: object) -> VideoSwinTransformer:
    """Swin-B: embed 128, depths 2-2-18-2, heads 4-8-16-32 (88M), as swin_base_patch244_window877_kinetics400_22k."""
    return create_model("video-swin-b", **overrides)
