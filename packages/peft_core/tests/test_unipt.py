"""UniPT side network: equivalence with hand-written references of the upstream formulas, shapes, masking,
frozen-backbone memory behaviour, parameter counts, config validation.

The ``Ref*`` classes below are written straight from ``/work/shared/reference/exact_formulas.md`` (sections
unipt_vse_transformer, unipt_vse_cnn, unipt_clip4clip_visual, unipt_mdetr_side_helpers) and from the CLIP-ViL
``LXRTEncoder`` side network, with upstream's module names, independently of ``peft_core.tuners.unipt``; weights are
copied into :class:`UniPTSide` through :func:`convert_upstream_state_dict`. Everything runs in float64 on CPU.
"""

from __future__ import annotations

import json

import pytest
import timm
import torch
import torch.nn.functional as F
import transformers
from peft_core.tuners.unipt import (
    PRESETS,
    UniPTConfig,
    UniPTSide,
    collect_hidden_states,
    convert_upstream_state_dict,
    freeze,
    masked_mean,
    run_frozen,
)
from torch import nn

DT = torch.float64
ATOL = 1e-10


# ------------------------------------------------------------------------------------------------ references
def l1_add(x, dim, eps):
    return x / (x.abs().sum(dim, keepdim=True) + eps)


def l1_clamp(x, dim, eps):
    return x / x.abs().sum(dim, keepdim=True).clamp(min=eps)


def mmean(x, maskf, clamp=False):
    if maskf is None:
        return x.mean(1)
    den = maskf.sum(1, keepdim=True)
    return (x * maskf[..., None]).sum(1) / (den.clamp(min=1.0) if clamp else den)


def lin_ln(i, o):
    return nn.Sequential(nn.Linear(i, o), nn.LayerNorm(o))


class RefVSEText(nn.Module):
    """exact_formulas.md: unipt_vse_transformer."""

    def __init__(self, hidden, embed, factor):
        super().__init__()
        m = embed // factor
        self.downsample_layers = nn.ModuleList(lin_ln(h, m) for h in hidden)
        self.projection_layer = lin_ln(m, m)
        self.upsample_layer = nn.Sequential(nn.ReLU(), nn.Linear(m, embed))
        self.gate_layer = nn.Linear(m, 1)

    def forward(self, hs, lengths):
        n, (_b, length) = len(hs), hs[0].shape[:2]
        mask = (torch.arange(length)[None, :] < lengths[:, None]).to(DT)
        anc = self.downsample_layers[n - 1](hs[n - 1])
        a = mmean(anc, mask)
        ms, cs = [], []
        for i in range(n - 1):
            t_feat = self.downsample_layers[i](hs[i])
            t = mmean(t_feat, mask)
            w = anc @ t_feat.transpose(1, 2) * mask[:, None, :]
            w = l1_add(torch.relu(w), -1, 1e-8) + torch.eye(length, dtype=DT)
            ms.append(w @ t_feat)
            cs.append(self.gate_layer(a * t))
        p = torch.softmax(torch.cat(cs, 1), 1)
        merged = sum(p[:, i, None, None] * ms[i] for i in range(n - 1))
        return self.upsample_layer(anc + self.projection_layer(merged)), p


def nearest_up(x, r):
    return x.repeat_interleave(r, dim=2).repeat_interleave(r, dim=3)


def window_sum(x, r):
    b, c, h, w = x.shape
    return x.reshape(b, c, h // r, r, w // r, r).sum(dim=(3, 5))


class RefVSECNN(nn.Module):
    """exact_formulas.md: unipt_vse_cnn, with the r x r windows written as reshapes (no Unfold/Fold/AvgPool)."""

    def __init__(self, hidden, embed, factor):
        super().__init__()
        m = embed // factor
        conv_bn = lambda i, o: nn.Sequential(nn.Conv2d(i, o, 1), nn.BatchNorm2d(o))
        self.downsample_layers = nn.ModuleList(conv_bn(h, m) for h in hidden)
        self.projection_layer = conv_bn(m, m)
        self.upsample_layer = nn.Sequential(nn.ReLU(), nn.Conv2d(m, embed, 1))
        self.identity_layers = nn.ModuleList(
            nn.Sequential(nn.Conv2d(hidden[-1], h, 1), nn.ReLU()) for h in hidden[:-1]
        )
        self.gate_layer = nn.Linear(m, 1)

    def forward(self, hs, rates):
        flat = lambda x: x.reshape(x.size(0), x.size(1), -1).permute(0, 2, 1)
        h3 = hs[-1]
        b, _, hl, wl = h3.shape
        anc = self.downsample_layers[-1](h3)
        af = flat(anc)
        a = af.mean(1)
        ms, cs = [], []
        for i, r in enumerate(rates):
            g = self.identity_layers[i](h3)
            mixed = nearest_up(g, r) * hs[i]
            s = torch.relu(mixed.sum(1).reshape(b, hl, r, wl, r))
            s = s / (s.abs().sum(dim=(2, 4), keepdim=True) + 1e-8)
            w = s.reshape(b, 1, hl * r, wl * r) + 1.0 / r**2
            t_feat = window_sum(w * hs[i], r)
            tf = flat(self.downsample_layers[i](t_feat))
            wt = l1_add(torch.relu(af @ tf.transpose(1, 2)), -1, 1e-8) + torch.eye(hl * wl, dtype=DT)
            ms.append(wt @ tf)
            cs.append(self.gate_layer(a * tf.mean(1)))
        p = torch.softmax(torch.cat(cs, 1), 1)
        merged = sum(p[:, i, None, None] * ms[i] for i in range(len(rates)))
        rolled = merged.permute(0, 2, 1).reshape(b, -1, hl, wl)
        return flat(self.upsample_layer(anc + self.projection_layer(rolled))), p


class RefCLIP4Clip(nn.Module):
    """exact_formulas.md: unipt_clip4clip_visual (also the text tower with mask and position)."""

    def __init__(self, hidden, embed, factor):
        super().__init__()
        m = embed // factor
        self.downsample_layers = nn.ModuleList(nn.Sequential(nn.ReLU(), nn.Linear(h, m)) for h in hidden)
        self.downsample_layer = nn.Sequential(nn.ReLU(), nn.Linear(embed, m))
        self.upsample_layer = nn.Sequential(nn.ReLU(), nn.Linear(m, embed))
        self.gate_layer = nn.Linear(m, 1)

    def forward(self, hs, raw_anchor, mask=None, position=None):
        anc = self.downsample_layer(raw_anchor)
        a = anc[:, 0, :]
        ms, cs = [], []
        for i in range(len(hs)):
            t_feat = self.downsample_layers[i](hs[i])
            t = mmean(t_feat, mask, clamp=True)
            w = anc @ t_feat.transpose(1, 2)
            if mask is not None:
                w = w * mask[:, None, :]
            mi = l1_clamp(torch.relu(w), -1, 1e-6) @ t_feat
            if position is not None:
                mi = mi + t_feat[torch.arange(t_feat.shape[0]), position][:, None, :]
            else:
                mi = mi + t_feat[:, :1, :]
            ms.append(mi)
            cs.append(self.gate_layer(a * t))
        p = torch.softmax(torch.cat(cs, 1), 1)
        merged = sum(p[:, i, None, None] * ms[i] for i in range(len(hs)))
        return (raw_anchor + self.upsample_layer(merged)).squeeze(1), p


def mlp_ln(d, hid):
    return nn.Sequential(nn.Linear(d, hid), nn.ReLU(), nn.Linear(hid, d), nn.LayerNorm(d))


class RefCLIPViL(nn.Module):
    """CLIP-ViL ``LXRTEncoder`` side network (construct_side_network + forward), eps 1e-6 added, identity."""

    def __init__(self, hidden, n_layers, factor):
        super().__init__()
        d = hidden // factor
        self.side_first_downsample_l = lin_ln(hidden, d)
        self.side_downsamples_l = nn.ModuleList(lin_ln(hidden, d) for _ in range(n_layers))
        self.side_final_upsample_l = nn.Sequential(nn.Linear(d, hidden))
        self.side_projection_l = mlp_ln(d, hidden)
        self.side_gate_layer_l = nn.Linear(d, 1)

    def forward(self, hs, extended_mask):
        mask = (extended_mask == 0).to(DT)  # (B, L) from the additive 0 / -10000 mask, as upstream
        feats = [self.side_first_downsample_l(hs[0])] + [m(h) for m, h in zip(self.side_downsamples_l, hs[1:])]
        anc, length = feats[-1], hs[0].shape[1]
        a = mmean(anc, mask)
        ms, cs = [], []
        for t_feat in feats[:-1]:
            w = l1_add(torch.relu(anc @ t_feat.transpose(1, 2) * mask[:, None, :]), -1, 1e-6)
            ms.append((w + torch.eye(length, dtype=DT)) @ t_feat)
            cs.append(self.side_gate_layer_l(a * mmean(t_feat, mask)))
        p = torch.softmax(torch.cat(cs, 1), 1)
        merged = sum(p[:, i, None, None] * ms[i] for i in range(len(ms)))
        return self.side_final_upsample_l(anc + self.side_projection_l(merged)), p


def mdetr_cross(q, c, mask=None, residual=True):
    """exact_formulas.md: unipt_mdetr_side_helpers cross_attention (l1norm eps 1e-7 added)."""
    w = q @ c.transpose(1, 2)
    if mask is not None:
        w = w * mask.to(DT)[:, None, :]
    w = l1_add(torch.relu(w), -1, 1e-7)
    if residual:
        w = w + torch.eye(w.size(-1), dtype=DT)
    return w @ c


class RefMDETR(nn.Module):
    """exact_formulas.md: unipt_mdetr_side_helpers, encode path then decode path (select_layers 1, 3, 5)."""

    def __init__(self, d_model):
        super().__init__()
        ds = d_model // 2
        for part in ("encoder", "decoder"):
            setattr(self, f"side_downsample0_{part}", lin_ln(d_model, ds))
            setattr(self, f"side_downsamples_{part}", nn.ModuleList(lin_ln(d_model, ds) for _ in range(3)))
            setattr(self, f"side_projection_{part}", mlp_ln(ds, d_model))
            setattr(self, f"side_gate_layer_{part}", nn.Linear(ds, 1))
        self.side_projection_crosser = nn.ModuleList(lin_ln(ds, ds) for _ in range(3))
        self.side_final_upsample = nn.Sequential(nn.ReLU(), nn.Linear(ds, d_model), nn.LayerNorm(d_model))

    def encode(self, src, memories, key_padding_mask):
        enc_mask = ~key_padding_mask
        feats = [src, *memories[:-1]]
        anc = self.side_downsample0_encoder(memories[-1])
        a = mmean(anc, enc_mask.to(DT))
        ms, cs = [], []
        for k, idx in enumerate((1, 3, 5)):
            t_feat = self.side_downsamples_encoder[k](feats[idx])
            ms.append(mdetr_cross(anc, t_feat, enc_mask))
            cs.append(self.side_gate_layer_encoder(a * mmean(t_feat, enc_mask.to(DT))))
        p = torch.softmax(torch.cat(cs, 1), 1)
        merged = sum(p[:, i, None, None] * ms[i] for i in range(3))
        return anc + self.side_projection_encoder(merged), p

    def decode(self, tgt, hs, side_img_memory, key_padding_mask):
        enc_mask = ~key_padding_mask
        feats = [tgt, *hs[:-1]]
        anc = self.side_downsample0_decoder(hs[-1])
        a = anc.mean(1)
        ms, cs, levels = [], [], []
        for k, idx in enumerate((1, 3, 5)):
            t_feat = self.side_downsamples_decoder[k](feats[idx])
            related = mdetr_cross(t_feat, side_img_memory, enc_mask, residual=False)
            t_feat = t_feat + self.side_projection_crosser[k](related)
            levels.append(t_feat)
            ms.append(mdetr_cross(anc, t_feat))
            cs.append(self.side_gate_layer_decoder(a * t_feat.mean(1)))
        p = torch.softmax(torch.cat(cs, 1), 1)
        merged = sum(p[:, i, None, None] * ms[i] for i in range(3))
        levels.append(anc + self.side_projection_decoder(merged))
        return self.side_final_upsample(torch.stack(levels)), p


def randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights everywhere (LN/BN affine too, so that wrong wiring cannot hide behind 1/0 defaults)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)
    return module


def side_from(ref: nn.Module, config: UniPTConfig, layout: str, prefix: str = "") -> UniPTSide:
    side = UniPTSide(config).to(DT)
    side.load_state_dict(convert_upstream_state_dict(ref.state_dict(), config, layout, prefix=prefix), strict=True)
    return side


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


# ------------------------------------------------------------------------------------------ equivalence tests
def test_vse_text_matches_reference():
    hidden, embed = [12, 16, 12, 8, 10], 16
    ref = randomise(RefVSEText(hidden, embed, 2).to(DT))
    side = side_from(ref, UniPTConfig.vse_text(embed_size=embed, hidden_sizes=hidden), "our_tuning")
    hs = [rand(3, 7, h, seed=i) for i, h in enumerate(hidden)]
    lengths = torch.tensor([7, 4, 2])
    want, p_want = ref(hs, lengths)
    got, p_got = side(hs, lengths=lengths)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    torch.testing.assert_close(p_got, p_want, atol=ATOL, rtol=0)
    # an explicit bool mask gives the same result as lengths
    mask = torch.arange(7)[None] < lengths[:, None]
    torch.testing.assert_close(side(hs, mask=mask).output, want, atol=ATOL, rtol=0)


CNN_HIDDEN, CNN_EMBED = [4, 6, 8, 10], 12
# (input px, stage strides 4/8/16/32): 64/96/128 px equivalents plus upstream's own 512 px (rates 8/4/2)
CNN_SIZES = {64: (16, 8, 4, 2), 96: (24, 12, 6, 3), 128: (32, 16, 8, 4), 512: (128, 64, 32, 16)}


def cnn_features(px: int, batch: int = 2, seed: int = 0) -> list[torch.Tensor]:
    return [rand(batch, c, s, s, seed=seed + i) for i, (c, s) in enumerate(zip(CNN_HIDDEN, CNN_SIZES[px]))]


@pytest.mark.parametrize("px", sorted(CNN_SIZES))
def test_vse_cnn_matches_reference(px):
    ref = randomise(RefVSECNN(CNN_HIDDEN, CNN_EMBED, 2).to(DT))
    side = side_from(ref, UniPTConfig.vse_image(hidden_sizes=CNN_HIDDEN, embed_size=CNN_EMBED), "our_tuning")
    sizes = CNN_SIZES[px]
    rates = [s // sizes[-1] for s in sizes[:-1]]
    if px == 512:
        assert rates == [8, 4, 2]  # upstream's hard-coded HW_rate
    assert side.spatial_rates(cnn_features(px)) == [(r, r) for r in rates]
    for train in (True, False):  # BatchNorm with batch statistics, then with the (identically updated) running ones
        ref.train(train)
        side.train(train)
        feats = cnn_features(px, seed=10 * train)
        want, p_want = ref(feats, rates)
        got, p_got = side(feats)
        assert got.shape == (2, sizes[-1] ** 2, CNN_EMBED)
        torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(p_got, p_want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("text", [False, True])
def test_clip4clip_matches_reference(text):
    hidden, embed = ([6, 8, 6, 5] if text else [6] * 4), 8
    ref = randomise(RefCLIP4Clip(hidden, embed, 1).to(DT))
    preset = UniPTConfig.clip4clip_text if text else UniPTConfig.clip4clip_visual
    side = side_from(ref, preset(embed_size=embed, hidden_sizes=hidden), "our_tuning")
    hs = [rand(3, 7, h, seed=i) for i, h in enumerate(hidden)]
    raw = rand(3, embed, seed=9)
    kwargs = {}
    if text:  # mask = (input_ids != 0).float(), position = input_ids.argmax(-1) (EOT has the largest id)
        input_ids = torch.tensor([[5, 3, 9, 0, 0, 0, 0], [4, 2, 6, 3, 8, 1, 12], [2, 11, 0, 0, 0, 0, 0]])
        kwargs = dict(mask=(input_ids != 0).to(DT), position=input_ids.argmax(-1))
    want, p_want = ref(hs, raw.unsqueeze(1), **kwargs)
    feats = hs if text else torch.stack(hs)  # CLIP4Clip stacks its (equal-width) hidden states
    got, p_got = side(feats, anchor=raw.unsqueeze(1), **kwargs)
    assert got.shape == (3, embed)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    torch.testing.assert_close(p_got, p_want, atol=ATOL, rtol=0)
    torch.testing.assert_close(side(hs, anchor=raw, **kwargs).output, want, atol=ATOL, rtol=0)  # (B, E) anchor


def test_clipvil_matches_reference():
    hidden, n_layers = 12, 4
    ref = randomise(RefCLIPViL(hidden, n_layers, 2).to(DT))
    side = side_from(ref, UniPTConfig.clipvil(hidden_size=hidden, num_layers=n_layers), "clipvil")
    hs = [rand(2, 9, hidden, seed=i) for i in range(n_layers + 1)]
    valid = torch.tensor([[1] * 9, [1] * 5 + [0] * 4], dtype=DT)
    extended = (1.0 - valid) * -10000.0
    want, p_want = ref(hs, extended)
    got, p_got = side(hs, mask=(extended == 0))
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    torch.testing.assert_close(p_got, p_want, atol=ATOL, rtol=0)


def test_mdetr_encoder_decoder_match_reference():
    d_model, n_img, n_txt, n_query = 16, 10, 4, 5
    ref = randomise(RefMDETR(d_model).to(DT))
    enc = side_from(ref, UniPTConfig.mdetr_encoder(d_model=d_model), "mdetr_encoder")
    dec = side_from(ref, UniPTConfig.mdetr_decoder(d_model=d_model), "mdetr_decoder")
    length = n_img + n_txt
    src = rand(2, length, d_model, seed=1)
    memories = [rand(2, length, d_model, seed=10 + i) for i in range(6)]
    key_padding_mask = torch.zeros(2, length, dtype=torch.bool)
    key_padding_mask[1, -2:] = True  # padded text tokens of the second sample
    mem_want, p_enc_want = ref.encode(src, memories, key_padding_mask)
    mem_got, p_enc_got = enc([src, *memories], mask=~key_padding_mask)
    torch.testing.assert_close(mem_got, mem_want, atol=ATOL, rtol=0)
    torch.testing.assert_close(p_enc_got, p_enc_want, atol=ATOL, rtol=0)
    tgt = torch.zeros(2, n_query, d_model, dtype=DT)
    hs = [rand(2, n_query, d_model, seed=20 + i) for i in range(6)]
    out_want, p_dec_want = ref.decode(tgt, hs, mem_want, key_padding_mask)
    out_got, p_dec_got = dec([tgt, *hs], context=mem_got, context_mask=~key_padding_mask)
    assert out_got.shape == (4, 2, n_query, d_model)
    torch.testing.assert_close(out_got, out_want, atol=ATOL, rtol=0)
    torch.testing.assert_close(p_dec_got, p_dec_want, atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------- parameter counts
# exact counts of this implementation; (reference "~" value in millions from unipt.md's table)
PARAM_COUNTS = {
    "unipt_vse_text": (5_921_281, 5.92),
    "unipt_vse_image": (6_433_537, 6.43),
    "unipt_clip4clip_visual": (5_644_289, 5.64),
    "unipt_clip4clip_text": (3_940_353, 3.94),
    "unipt_clipvil": (4_736_641, 4.74),
}


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_preset_parameter_counts(name):
    exact, reference_millions = PARAM_COUNTS[name]
    n = sum(p.numel() for p in UniPTSide(PRESETS[name]()).parameters())
    assert n == exact
    assert round(n / 1e6, 2) == reference_millions


def test_vse_image_identity_convs_and_mdetr_total():
    side = UniPTSide(UniPTConfig.vse_image())
    assert sum(p.numel() for p in side.identity_convs.parameters()) == 3_671_808  # table: "identity convs 3.67M"
    enc = sum(p.numel() for p in UniPTSide(UniPTConfig.mdetr_encoder()).parameters())
    dec = sum(p.numel() for p in UniPTSide(UniPTConfig.mdetr_decoder()).parameters())
    assert (enc, dec) == (198_913, 282_753)
    assert round((enc + dec) / 1e6, 2) == 0.48  # table: MDETR ~0.48M (encoder + decoder side together)


# ------------------------------------------------------------------------------------------ shapes and masks
def small(preset: str, **overrides) -> UniPTSide:
    sizes = {
        "unipt_vse_text": dict(hidden_size=12, num_hidden_states=5, embed_size=16),
        "unipt_vse_image": dict(hidden_sizes=CNN_HIDDEN, embed_size=CNN_EMBED),
        "unipt_clip4clip_visual": dict(width=12, num_hidden_states=4, embed_size=8),
        "unipt_clip4clip_text": dict(width=10, num_hidden_states=4, embed_size=8),
        "unipt_clipvil": dict(hidden_size=12, num_layers=4),
        "unipt_mdetr_encoder": dict(d_model=16),
        "unipt_mdetr_decoder": dict(d_model=16),
    }[preset]
    return UniPTSide(PRESETS[preset](**sizes, **overrides)).to(DT)


@pytest.mark.parametrize("length", [1, 5, 17])
def test_text_tower_shapes(length):
    side = small("unipt_vse_text")
    lengths = torch.tensor([length, max(1, length // 2)])
    out, p = side([rand(2, length, 12, seed=i) for i in range(5)], lengths=lengths)
    assert out.shape == (2, length, 16) and p.shape == (2, 4)
    side = small("unipt_clip4clip_text")
    ids = torch.randint(1, 50, (2, length))
    out, p = side(
        [rand(2, length, 10, seed=i) for i in range(4)], anchor=rand(2, 8), mask=ids != 0, position=ids.argmax(-1)
    )
    assert out.shape == (2, 8) and p.shape == (2, 4)


@pytest.mark.parametrize("px", [64, 96, 128])
def test_image_tower_shapes(px):
    side = small("unipt_vse_image").eval()
    out, p = side(cnn_features(px, batch=3))
    assert out.shape == (3, CNN_SIZES[px][-1] ** 2, CNN_EMBED) and p.shape == (3, 3)


def test_cnn_pyramid_from_a_real_resnet_at_three_resolutions():
    backbone = freeze(timm.create_model("resnet18", pretrained=False, features_only=True, out_indices=(1, 2, 3, 4)))
    side = UniPTSide(UniPTConfig.vse_image(hidden_sizes=backbone.feature_info.channels(), embed_size=16)).eval()
    for px in (64, 96, 128):
        feats = run_frozen(backbone, torch.randn(2, 3, px, px))
        out, _ = side(feats)
        assert out.shape == (2, (px // 32) ** 2, 16)
        assert side.spatial_rates(feats) == [(8, 8), (4, 4), (2, 2)]
    with pytest.raises(ValueError, match=r"25x25.*not an integer multiple.*4x4"):
        side(run_frozen(backbone, torch.randn(1, 3, 100, 100)))  # stage maps 25/13/7/4


def test_rectangular_and_non_divisible_maps():
    side = small("unipt_vse_image").eval()
    feats = [rand(1, c, 4 * 4 // r, 6 * 4 // r, seed=c) for c, r in zip(CNN_HIDDEN, (1, 2, 4, 8))]
    out, _ = side(feats)  # rates (4, 4) from 16x24 vs 2x3 etc.
    assert out.shape == (1, 2 * 3, CNN_EMBED)
    bad = cnn_features(64)
    bad[1] = rand(2, 6, 7, 7)
    with pytest.raises(ValueError, match=r"7x7.*not an integer multiple of the last \(anchor\) map's 2x2"):
        side(bad)


def perturb_padding(hs, valid):
    """Replace every padded position of every hidden state with fresh noise."""
    pad = ~valid[:, :, None]
    return [torch.where(pad, rand(*h.shape, seed=100 + i) * 10, h) for i, h in enumerate(hs)]


def test_text_padding_invariance():
    lengths = torch.tensor([7, 4, 2])
    valid = torch.arange(7)[None] < lengths[:, None]
    # VSE-infty text (lengths), CLIP-ViL (mask): valid positions ignore whatever sits in the padding
    for preset, n, width in (("unipt_vse_text", 5, 12), ("unipt_clipvil", 5, 12)):
        side = small(preset)
        hs = [rand(3, 7, width, seed=i) for i in range(n)]
        out, p = side(hs, mask=valid)
        out2, p2 = side(perturb_padding(hs, valid), mask=valid)
        torch.testing.assert_close(out2[valid], out[valid], atol=ATOL, rtol=0)
        torch.testing.assert_close(p2, p, atol=ATOL, rtol=0)
        # extra padding (longer batch) changes nothing either
        longer = [torch.cat([h, rand(3, 5, width, seed=50 + i)], 1) for i, h in enumerate(hs)]
        out3, p3 = side(longer, lengths=lengths)
        torch.testing.assert_close(out3[:, :7][valid], out[valid], atol=ATOL, rtol=0)
        torch.testing.assert_close(p3, p, atol=ATOL, rtol=0)
    # CLIP4Clip text: the single output token ignores the padding
    side = small("unipt_clip4clip_text")
    hs = [rand(3, 7, 10, seed=i) for i in range(4)]
    anchor, position = rand(3, 8), lengths - 1
    out, p = side(hs, anchor=anchor, mask=valid, position=position)
    out2, p2 = side(perturb_padding(hs, valid), anchor=anchor, mask=valid, position=position)
    torch.testing.assert_close(out2, out, atol=ATOL, rtol=0)
    torch.testing.assert_close(p2, p, atol=ATOL, rtol=0)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_confidence_is_a_distribution_and_is_exposed(preset):
    side = small(preset)
    if preset == "unipt_vse_image":
        _, p = side(cnn_features(64))
    elif preset.startswith("unipt_clip4clip"):
        width = 12 if preset.endswith("visual") else 10
        _, p = side([rand(2, 5, width, seed=i) for i in range(4)], anchor=rand(2, 8))
    elif preset == "unipt_mdetr_decoder":
        _, p = side([rand(2, 5, 16, seed=i) for i in range(7)], context=rand(2, 9, 8))
    else:
        n, width = len(side.config.hidden_sizes), side.config.hidden_sizes[0]
        _, p = side([rand(2, 5, width, seed=i) for i in range(n)])
    assert p.shape == (2, len(side.targets))
    assert torch.all(p > 0)
    torch.testing.assert_close(p.sum(1), torch.ones(2, dtype=DT), atol=1e-12, rtol=0)
    assert side.last_confidence is not None and not side.last_confidence.requires_grad
    torch.testing.assert_close(side.last_confidence, p.detach())


# ----------------------------------------------------------------------------- frozen backbone: grads, memory
class TinyBackbone(nn.Module):
    def __init__(self, width=12, n_layers=4):
        super().__init__()
        self.embed = nn.Linear(5, width)
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(width, 3 * width), nn.GELU(), nn.Linear(3 * width, width)) for _ in range(n_layers)
        )

    def forward(self, x):
        h = self.embed(x)
        for layer in self.layers:
            h = h + layer(h)
        return h


def count_saved(fn, *args, **kwargs):
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = fn(*args, **kwargs)
    return out, saved


def test_frozen_backbone_keeps_no_activations_and_gets_no_grad():
    torch.manual_seed(0)
    backbone = TinyBackbone()  # parameters still require grad: run_frozen alone must keep the graph away
    side = UniPTSide(UniPTConfig.vse_text(hidden_size=12, num_hidden_states=5, embed_size=16))
    x = torch.randn(2, 6, 5)
    _, saved_plain = count_saved(backbone, x)
    assert len(saved_plain) > 0  # sanity: an ordinary forward saves activations

    with collect_hidden_states(backbone, backbone.layers, include_input=True) as states:
        _, saved_backbone = count_saved(run_frozen, backbone, x)
    assert saved_backbone == []
    assert len(states) == 5 and not any(s.requires_grad for s in states)

    (out, _), saved_side = count_saved(side, states, lengths=torch.tensor([6, 3]))
    _, saved_side_alone = count_saved(side, [s.clone() for s in states], lengths=torch.tensor([6, 3]))
    assert len(saved_side) == len(saved_side_alone) > 0  # only the side network's tensors are saved
    out.square().mean().backward()
    assert all(p.grad is None for p in backbone.parameters())
    assert all(p.grad is not None for p in side.parameters())


def test_gradients_only_on_side_params_with_frozen_cnn():
    backbone = freeze(
        nn.ModuleList(
            nn.Conv2d(c_in, c_out, 3, stride=2, padding=1) for c_in, c_out in zip([3, *CNN_HIDDEN[:-1]], CNN_HIDDEN)
        )
    )

    def pyramid(img):
        feats, h = [], F.avg_pool2d(img, 2)
        for conv in backbone:
            h = conv(h)
            feats.append(h)
        return feats

    side = UniPTSide(UniPTConfig.vse_image(hidden_sizes=CNN_HIDDEN, embed_size=CNN_EMBED))
    feats, saved = count_saved(run_frozen, pyramid, torch.randn(2, 3, 64, 64))
    assert saved == [] and [f.shape[-1] for f in feats] == [16, 8, 4, 2]
    out, _ = side(feats)
    out.sum().backward()
    assert all(p.grad is None for p in backbone.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in side.parameters())


def test_collect_hidden_states_matches_bert_output_hidden_states():
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    bert = freeze(transformers.BertModel(config))
    ids = torch.randint(1, 50, (2, 7))
    attention = torch.ones_like(ids)
    with collect_hidden_states(bert, [f"encoder.layer.{i}" for i in range(3)], include_input=True) as states:
        out = run_frozen(bert, ids, attention_mask=attention, output_hidden_states=True)
    assert len(states) == len(out.hidden_states) == 4
    for got, want in zip(states, out.hidden_states):
        torch.testing.assert_close(got, want)
    side = UniPTSide(UniPTConfig.vse_text(hidden_size=16, num_hidden_states=4, embed_size=8))
    assert side(states, lengths=torch.tensor([7, 3])).output.shape == (2, 7, 8)
    # hooks are gone after the block
    run_frozen(bert, ids)
    assert len(states) == 4


# ------------------------------------------------------------------------------------------------ the config
def test_config_json_round_trip_and_unknown_keys():
    for make in PRESETS.values():
        config = make()
        data = json.loads(json.dumps(config.to_dict()))
        assert data["method"] == "unipt"
        assert UniPTConfig.from_dict(data) == config
    with pytest.warns(UserWarning, match="future_field"):
        assert UniPTConfig.from_dict({**UniPTConfig().to_dict(), "future_field": 1}) == UniPTConfig()
    with pytest.raises(ValueError, match="method='lora'"):
        UniPTConfig.from_dict({"method": "lora"})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(input_kind="grid"), r"input_kind='grid' is not allowed; expected one of \['tokens', 'cnn_pyramid'\]"),
        (dict(l1norm_mode="sqrt"), r"l1norm_mode='sqrt' is not allowed; expected one of \['add_eps', 'clamp'\]"),
        (dict(downsample="mlp"), r"downsample='mlp' is not allowed; expected one of"),
        (dict(projection="conv_bn"), r"projection='conv_bn' is not allowed with input_kind='tokens'"),
        (dict(up="relu_conv"), r"up='relu_conv' is not allowed with input_kind='tokens'"),
        (dict(anchor="token"), r"identity=True is not allowed with anchor='token'"),
        (dict(residual="raw_anchor"), r"residual='raw_anchor' is not allowed with anchor='last_sequence'"),
        (dict(target_layers=[0, 13]), r"target_layers=\[0, 13\] is not allowed; expected .* in \[0, 13\)"),
        (dict(target_layers=[]), r"target_layers=\[\] is not allowed"),
        (dict(hidden_sizes=[768]), r"expected at least 2 layers"),
        (dict(hidden_sizes=[768, 0]), r"hidden_sizes\[1\]=0 is not allowed; expected an integer > 0"),
        (dict(eps=0.0), r"eps=0.0 is not allowed; expected a number > 0"),
        (dict(downsample_factor=2048), r"downsample_factor=2048 is not allowed"),
        (dict(init="kaiming"), r"init='kaiming' is not allowed; expected one of"),
    ],
)
def test_config_validation_names_field_and_allowed_values(changes, message):
    with pytest.raises(ValueError, match=message):
        UniPTConfig(**changes)


def test_cnn_config_rejects_token_kinds():
    with pytest.raises(ValueError, match=r"downsample='linear_ln' is not allowed with input_kind='cnn_pyramid'"):
        UniPTConfig.vse_image(downsample="linear_ln")


def test_forward_input_errors():
    side = small("unipt_vse_text")
    hs = [rand(2, 4, 12, seed=i) for i in range(5)]
    with pytest.raises(ValueError, match="expected 5 features"):
        side(hs[:4])
    with pytest.raises(ValueError, match=r"features\[2\] has shape \(2, 4, 7\)"):
        side([*hs[:2], rand(2, 4, 7), *hs[3:]])
    with pytest.raises(ValueError, match="either `mask` or `lengths`"):
        side(hs, mask=torch.ones(2, 4, dtype=torch.bool), lengths=torch.tensor([4, 4]))
    with pytest.raises(ValueError, match="takes no `anchor` tensor"):
        side(hs, anchor=rand(2, 16))
    with pytest.raises(ValueError, match="needs a `context`"):
        small("unipt_mdetr_decoder")([rand(2, 3, 16, seed=i) for i in range(7)])
    with pytest.raises(ValueError, match="takes no mask"):
        small("unipt_vse_image")(cnn_features(64), lengths=torch.tensor([4, 4]))


def test_masked_mean_clamp_option_only_matters_for_empty_rows():
    x = rand(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    plain, clamped = masked_mean(x, mask), masked_mean(x, mask, clamp=True)
    torch.testing.assert_close(plain[0], x[0, :2].mean(0))
    torch.testing.assert_close(clamped[0], plain[0])
    assert torch.isnan(plain[1]).all()  # VSE-infty / CLIP-ViL / MDETR: 0 / 0 for an all-padding row
    assert torch.equal(clamped[1], torch.zeros(4, dtype=DT))  # CLIP4Clip: clamp(sum(mask), min=1)


def test_output_levels_without_crossers_stack_the_reduced_targets():
    side = UniPTSide(UniPTConfig.mdetr_decoder(d_model=16, cross_context=False, up="none")).to(DT)
    feats = [rand(2, 5, 16, seed=i) for i in range(7)]
    out, _ = side(feats)
    assert out.shape == (4, 2, 5, 8)
    for k, i in enumerate((1, 3, 5)):
        torch.testing.assert_close(out[k], side.downsamples[k](feats[i]))
