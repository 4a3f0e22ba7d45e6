"""Video Swin: shapes, windows, shifted-window mask, relative positions, attention formula (softmax always on)."""

from __future__ import annotations

import itertools

import pytest
import torch
from video_swin_vpetl.methods import apply_recipe, build_recipe
from video_swin_vpetl.models import WindowAttention3D, create_model
from video_swin_vpetl.models.windows import (
    get_window_size,
    relative_position_index,
    shifted_window_mask,
    window_partition,
    window_reverse,
)
from vsw_helpers import clip_batch, tiny_model


def test_forward_shapes_both_heads() -> None:
    x = clip_batch()
    for head in ("vpetl", "i3d"):
        model = tiny_model(num_classes=7, head=head).eval()
        assert model(x).shape == (2, 7)
    feats = tiny_model().eval().forward_features(x)
    assert feats.shape == (2, 64, 4, 4, 4)  # embed 32 * 2, T/2, H/32 * 4 (2 stages: /4 then /2)


def test_inputs_not_divisible_by_patch_or_window_are_padded() -> None:
    model = tiny_model().eval()
    assert model(torch.randn(1, 3, 7, 36, 44)).shape == (1, 5)


def test_get_window_size_clamps_to_input() -> None:
    assert get_window_size((4, 56, 56), (8, 7, 7), (4, 3, 3)) == ((4, 7, 7), (0, 3, 3))
    assert get_window_size((4, 7, 7), (8, 7, 7), (4, 3, 3)) == ((4, 7, 7), (0, 0, 0))
    assert get_window_size((16, 56, 56), (8, 7, 7), None) == ((8, 7, 7), (0, 0, 0))


def test_partition_reverse_roundtrip() -> None:
    x = torch.randn(2, 4, 8, 12, 5)
    windows = window_partition(x, (2, 4, 4))
    assert windows.shape == (2 * 2 * 2 * 3, 32, 5)
    assert torch.equal(window_reverse(windows, (2, 4, 4), 2, 4, 8, 12), x)


def _mask_by_slices(d: int, h: int, w: int, window: tuple, shift: tuple) -> torch.Tensor:
    """The upstream construction (three slices per axis, a counter per region), written independently."""
    img = torch.zeros(1, d, h, w, 1)
    slices = [(slice(-win), slice(-win, -s), slice(-s, None)) for win, s in zip(window, shift, strict=True)]
    for cnt, (sd, sh, sw) in enumerate(itertools.product(*slices)):
        img[:, sd, sh, sw, :] = cnt
    ids = window_partition(img, window).squeeze(-1)
    diff = ids[:, None, :] - ids[:, :, None]
    return diff.ne(0).float() * -100.0


@pytest.mark.parametrize("dims,window,shift", [((4, 8, 8), (2, 4, 4), (1, 2, 2)), ((4, 14, 14), (4, 7, 7), (0, 3, 3)),
                                               ((8, 14, 21), (4, 7, 7), (2, 3, 3))])
def test_shift_mask_matches_region_slices(dims: tuple, window: tuple, shift: tuple) -> None:
    mask = shifted_window_mask(*dims, window, shift)
    assert torch.equal(mask, _mask_by_slices(*dims, window, shift))
    assert (mask == 0).any() and (mask == -100.0).any()


def test_relative_position_index_matches_pairwise_offsets() -> None:
    window = (2, 3, 4)
    index = relative_position_index(window)
    coords = list(itertools.product(range(2), range(3), range(4)))
    for i, a in enumerate(coords):
        for j, b in enumerate(coords):
            dt, dy, dx = (a[0] - b[0] + 1, a[1] - b[1] + 2, a[2] - b[2] + 3)
            assert index[i, j] == dt * 5 * 7 + dy * 7 + dx
    assert index.max() == 3 * 5 * 7 - 1


def reference_attention(attn: WindowAttention3D, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """softmax((q s) k^T + B + M) v, projected: written independently of the module (q, k, v from ``attn.qkv``,
    so methods hooked on the projection, PATT and LoRA, act here too)."""
    b_, n, c = x.shape
    h = attn.num_heads
    qkv = attn.qkv(x)
    q, k, v = (qkv[..., i * c : (i + 1) * c].reshape(b_, n, h, c // h).transpose(1, 2) for i in range(3))
    logits = (q * (c // h) ** -0.5) @ k.transpose(-1, -2)
    bias = attn.relative_position_bias_table[attn.relative_position_index[:n, :n]].permute(2, 0, 1)
    logits = logits + bias
    if mask is not None:
        logits = logits + mask.repeat(b_ // mask.shape[0], 1, 1)[:, None]
    out = torch.softmax(logits, dim=-1) @ v
    return out.transpose(1, 2).reshape(b_, n, c) @ attn.proj.weight.T + attn.proj.bias


@pytest.mark.parametrize("recipe", ["head-only", "full", "adaptformer-8", "patt-qk-8", "patt-kv-8", "lora-4"])
def test_attention_always_applies_softmax_bias_and_mask(recipe: str) -> None:
    """Upstream bug: bias, mask and softmax were skipped unless att_prefix_mode was one of a few PATT modes (so
    AdaptFormer-only, linear-probe, full-tuning and patt_qk runs had no softmax). Here the attention is the same
    computation whatever the recipe."""
    model = tiny_model().eval()
    apply_recipe(model, build_recipe(recipe))
    attn = model.layers[0].blocks[1].attn
    mask = shifted_window_mask(4, 8, 8, (2, 4, 4), (1, 2, 2))
    x = torch.randn(2 * mask.shape[0], 32, 32)
    with torch.no_grad():
        expected = reference_attention(attn, x, mask)
        out = attn(x, mask)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_shifted_block_uses_mask_and_matches_manual_roll() -> None:
    """A shifted block == roll, window attention with the mask, roll back (checked against the reference)."""
    model = tiny_model().eval()
    block = model.layers[0].blocks[1]
    x = torch.randn(1, 4, 8, 8, 32)
    mask = shifted_window_mask(4, 8, 8, (2, 4, 4), (1, 2, 2))
    with torch.no_grad():
        out = block._window_attention(x, mask)
        rolled = torch.roll(block.norm1(x), shifts=(-1, -2, -2), dims=(1, 2, 3))
        windows = reference_attention(block.attn, window_partition(rolled, (2, 4, 4)), mask)
        manual = torch.roll(window_reverse(windows, (2, 4, 4), 1, 4, 8, 8), shifts=(1, 2, 2), dims=(1, 2, 3))
    torch.testing.assert_close(out, manual, rtol=1e-5, atol=1e-5)


def test_swin_b_size_and_names() -> None:
    with torch.device("meta"):
        model = create_model("video-swin-b", num_classes=400, head="i3d")
    total = sum(p.numel() for p in model.parameters())
    assert total == 88_048_984  # 88.0M, the published Swin-B size
    names = dict(model.named_parameters())
    for key in ("patch_embed.proj.weight", "layers.2.blocks.17.attn.relative_position_bias_table",
                "layers.0.downsample.reduction.weight", "norm.weight", "head.fc_cls.weight"):
        assert key in names
    assert names["layers.0.blocks.0.attn.relative_position_bias_table"].shape == (15 * 13 * 13, 4)
    assert model.layers[3].blocks[0].attn.qkv.in_features == 1024


def test_unknown_arch_and_option_errors() -> None:
    with pytest.raises(ValueError, match="arch='nope'"):
        create_model("nope")
    with pytest.raises(ValueError, match="unknown model option"):
        create_model("video-swin-micro", bogus=1)
