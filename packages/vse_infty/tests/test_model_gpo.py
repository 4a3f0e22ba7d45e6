"""GPO pooling and the small tensor ops (l2norm, grid flattening, random grid dropping) against hand-made cases and
an independent per-sample computation of upstream's formula (woodfrog/vse_infty lib/modules/aggr/gpo.py)."""

from __future__ import annotations

import math

import pytest
import torch
from vse_infty.model.gpo import GPO, positional_encoding_1d
from vse_infty.model.ops import (
    drop_features,
    drop_features_unipt,
    drop_features_vse_infty,
    flat_featuremap,
    l2norm,
)


def test_positional_encoding_values() -> None:
    pe = positional_encoding_1d(4, 5)
    assert pe.shape == (5, 4)
    torch.testing.assert_close(pe[0], torch.tensor([0.0, 1.0, 0.0, 1.0]))
    # w_0 = 1, w_1 = 10000^(-2/4) = 0.01
    torch.testing.assert_close(pe[3], torch.tensor([math.sin(3), math.cos(3), math.sin(0.03), math.cos(0.03)]))
    with pytest.raises(ValueError, match="even d_model"):
        positional_encoding_1d(3, 2)


def test_constant_scores_give_the_mean_of_the_valid_features() -> None:
    """Zero GRU / linear weights: every valid position scores 0, so the weights are 1/n and GPO is the mean."""
    gpo = GPO(4, 4)
    with torch.no_grad():
        for p in gpo.parameters():
            p.zero_()
    features = torch.tensor([[[1.0, -2.0], [3.0, 4.0], [5.0, 0.0]],
                             [[2.0, 2.0], [1e6, -1e6], [7.0, 7.0]]])  # sample 1: one valid, garbage padding
    pooled, weights = gpo(features, torch.tensor([3, 1]))
    torch.testing.assert_close(pooled, torch.tensor([[3.0, 2.0 / 3.0], [2.0, 2.0]]))
    torch.testing.assert_close(weights[0, :, 0], torch.full((3,), 1 / 3))
    assert weights[1, 1:].abs().max() < 1e-30  # padded positions get no weight


def _reference(gpo: GPO, x: torch.Tensor) -> torch.Tensor:
    """Upstream's formula for one sample with n valid rows, written out without packing or masking."""
    n = x.shape[0]
    h, _ = gpo.gru(positional_encoding_1d(gpo.d_pe, n).unsqueeze(0))
    h = (h[..., : gpo.d_hidden] + h[..., gpo.d_hidden:]) / 2
    w = torch.softmax(gpo.linear(h)[0, :, 0] / 0.1, dim=0)
    return (x.sort(dim=0, descending=True)[0] * w[:, None]).sum(0)


def test_batched_gpo_equals_the_per_sample_formula() -> None:
    torch.manual_seed(0)
    gpo = GPO(8, 8)
    features = torch.randn(3, 5, 6)
    lengths = torch.tensor([5, 2, 4])
    pooled, weights = gpo(features, lengths)
    for i, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(pooled[i], _reference(gpo, features[i, :n]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weights.sum(1)[:, 0], torch.ones(3))
    padded = features.clone()
    padded[1, 2:] = 100.0  # padding content never matters
    torch.testing.assert_close(gpo(padded, lengths)[0], pooled)


def test_gpo_weights_the_per_channel_sorted_features() -> None:
    torch.manual_seed(3)
    gpo = GPO(4, 4)
    x = torch.tensor([[[1.0, 9.0], [4.0, -1.0], [2.0, 3.0]]])
    pooled, weights = gpo(x, torch.tensor([3]))
    sorted_x = torch.tensor([[4.0, 9.0], [2.0, 3.0], [1.0, -1.0]])  # each channel sorted on its own
    torch.testing.assert_close(pooled[0], (sorted_x * weights[0]).sum(0))
    assert not torch.allclose(pooled[0], (x[0] * weights[0]).sum(0))


def test_gpo_rejects_bad_lengths() -> None:
    gpo = GPO(4, 4)
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 3\]"):
        gpo(torch.randn(2, 3, 5), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 3\]"):
        gpo(torch.randn(2, 3, 5), torch.tensor([4, 2]))
    with pytest.raises(ValueError, match=r"expects features \(B, K, D\)"):
        gpo(torch.randn(3, 5), torch.tensor([1, 1, 1]))


def test_l2norm_and_flat_featuremap() -> None:
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    torch.testing.assert_close(l2norm(x), torch.tensor([[0.6, 0.8], [0.0, 0.0]]))
    maps = torch.arange(2 * 3 * 2 * 2, dtype=torch.float).view(2, 3, 2, 2)
    flat = flat_featuremap(maps)
    assert flat.shape == (2, 4, 3)
    torch.testing.assert_close(flat[1, 2], maps[1, :, 1, 0])  # grid index h * W + w
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        flat_featuremap(flat)


def _is_ordered_subset(row: torch.Tensor, original: torch.Tensor, n: int) -> bool:
    kept = [tuple(r.tolist()) for r in row[:n]]
    source = [tuple(r.tolist()) for r in original]
    it = iter(source)
    return all(any(k == s for s in it) for k in kept)


@pytest.mark.parametrize("mode", ["unipt", "vse_infty"])
def test_dropped_grids_keep_order_and_pad_with_zeros(mode: str) -> None:
    torch.manual_seed(1)
    features = torch.randn(6, 10, 3)
    out, lengths = drop_features(features, 0.5, mode)
    assert lengths.dtype == torch.long and bool((lengths >= 1).all()) and bool((lengths <= 10).all())
    assert lengths.tolist() != [10] * 6  # something was dropped at rate 0.5
    if mode == "unipt":
        assert out.shape == features.shape
    else:
        assert out.shape == (6, int(lengths.max()), 3)
    for i, n in enumerate(lengths.tolist()):
        assert _is_ordered_subset(out[i], features[i], n)
        assert bool((out[i, n:] == 0).all())


def test_drop_rates_behave_like_upstream() -> None:
    torch.manual_seed(0)
    features = torch.randn(400, 64, 1)
    _, unipt = drop_features_unipt(features, 0.2)
    assert abs(unipt.float().mean().item() / 64 - 0.8) < 0.01  # each grid kept with probability 0.8
    _, vse = drop_features_vse_infty(features, 0.2)
    full = (vse == 64).float().mean().item()
    assert 0.15 < full < 0.3  # ~20% of images keep every grid (plus the rare lucky ones)
    assert abs(vse.float().mean().item() / 64 - (1 - 0.8 * 0.6 * 0.2)) < 0.02  # E[drop] = P(u>.2) E[.2u | u>.2]
    _, lengths = drop_features_unipt(torch.randn(50, 2, 1), 0.99)
    assert bool((lengths >= 1).all())  # at least one grid always survives
    with pytest.raises(ValueError, match="drop_feature_mode"):
        drop_features(features, 0.2, "bogus")
