"""Retrieval metrics against hand-made similarity matrices, upstream's per-row loops, and the 5-fold logic."""

from __future__ import annotations

import numpy as np
import pytest
from vse_infty.evaluation import chance_metrics, fold_metrics, i2t, retrieval_metrics, t2i
from vse_infty.evaluation import metrics as metrics_module

# 3 images x 6 captions, 2 captions per image (captions 2i, 2i+1 belong to image i); no ties.
SIMS = np.array([
    [0.90, 0.10, 0.80, 0.20, 0.30, 0.40],
    [0.50, 0.60, 0.10, 0.25, 0.70, 0.30],
    [0.10, 0.20, 0.30, 0.40, 0.50, 0.60],
])


def test_i2t_by_hand() -> None:
    # image 0: order c0 c2 c5 c4 c3 c1 -> best of {c0, c1} at 0
    # image 1: order c4 c1 c0 c5 c3 c2 -> best of {c2, c3} at 4
    # image 2: order c5 c4 ...        -> best of {c4, c5} at 0          ranks [0, 4, 0]
    out = i2t(SIMS, captions_per_image=2)
    assert out == pytest.approx({"r1": 200 / 3, "r5": 100.0, "r10": 100.0, "medr": 1.0, "meanr": 4 / 3 + 1})


def test_t2i_by_hand() -> None:
    # c0 [.9 .5 .1] -> img0 at 0;  c1 [.1 .6 .2] -> img0 at 2;  c2 [.8 .1 .3] -> img1 at 2
    # c3 [.2 .25 .4] -> img1 at 1; c4 [.3 .7 .5] -> img2 at 1; c5 [.4 .3 .6] -> img2 at 0   ranks [0 2 2 1 1 0]
    out = t2i(SIMS, captions_per_image=2)
    assert out == pytest.approx({"r1": 100 / 3, "r5": 100.0, "r10": 100.0, "medr": 2.0, "meanr": 2.0})


def test_retrieval_metrics_keys_and_rsum() -> None:
    out = retrieval_metrics(SIMS, captions_per_image=2)
    assert list(out) == ["i2t_r1", "i2t_r5", "i2t_r10", "i2t_medr", "i2t_meanr", "t2i_r1", "t2i_r5", "t2i_r10",
                         "t2i_medr", "t2i_meanr", "rsum"]
    assert out["rsum"] == pytest.approx(200 / 3 + 100 + 100 + 100 / 3 + 100 + 100)


def matrix_with_i2t_ranks(ranks: list[int]) -> np.ndarray:
    """One caption per image; image i's caption has exactly ranks[i] captions scored above it."""
    n = len(ranks)
    sims = np.zeros((n, n))
    for i, r in enumerate(ranks):
        others = [j for j in range(n) if j != i]
        order = [*others[:r], i, *others[r:]]
        sims[i, order] = np.linspace(1.0, 0.0, n)
    return sims


def test_recall_at_5_and_10_and_median_floor() -> None:
    ranks = [0, 0, 1, 4, 5, 9, 10, 11, 0, 2, 3, 6]
    # R@1 3/12, R@5 7/12, R@10 10/12; sorted 0 0 0 1 2 3 | 4 5 6 9 10 11 -> median 3.5 -> floor 3 + 1 = 4;
    # mean 51/12 + 1
    out = i2t(matrix_with_i2t_ranks(ranks), captions_per_image=1)
    assert out == pytest.approx({"r1": 25.0, "r5": 700 / 12, "r10": 1000 / 12, "medr": 4.0, "meanr": 51 / 12 + 1})


def loop_ranks(sims: np.ndarray, k: int) -> tuple[list[int], list[int]]:
    """The per-row loops of upstream i2t / t2i (argsort, reversed, position of the ground truth)."""
    forward = []
    for i, row in enumerate(sims):
        inds = np.argsort(row)[::-1]
        forward.append(min(int(np.where(inds == c)[0][0]) for c in range(k * i, k * i + k)))
    backward = []
    for c, col in enumerate(sims.T):
        inds = np.argsort(col)[::-1]
        backward.append(int(np.where(inds == c // k)[0][0]))
    return forward, backward


def test_vectorised_ranks_equal_upstream_loops_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    sims = np.random.default_rng(0).standard_normal((13, 65)).astype(np.float32)
    forward, backward = loop_ranks(sims, 5)
    monkeypatch.setattr(metrics_module, "CHUNK_ELEMENTS", 100)  # several row chunks
    assert metrics_module.i2t_ranks(sims).tolist() == forward
    assert metrics_module.t2i_ranks(sims).tolist() == backward


def test_fold_metrics_are_the_mean_of_independent_folds() -> None:
    rng = np.random.default_rng(1)
    sims = rng.standard_normal((10, 50))
    sims[np.arange(10)[:, None], np.arange(50).reshape(10, 5)] += 1.5  # some signal
    per_fold = [retrieval_metrics(sims[2 * f:2 * f + 2, 10 * f:10 * f + 10]) for f in range(5)]
    expected = {key: np.mean([m[key] for m in per_fold]) for key in per_fold[0]}
    assert fold_metrics(sims, folds=5) == pytest.approx(expected)
    spoiled = sims.copy()
    block = np.kron(np.eye(5), np.ones((2, 10))).astype(bool)
    spoiled[~block] = 100.0  # entries outside the folds do not count in fold metrics, they do in the full ones
    assert fold_metrics(spoiled, folds=5) == pytest.approx(expected)
    assert retrieval_metrics(spoiled)["rsum"] < retrieval_metrics(sims)["rsum"]


def test_perfect_and_bad_inputs() -> None:
    perfect = np.kron(np.eye(4), np.ones((1, 5)))
    perfect += np.random.default_rng(0).uniform(0, 1e-3, perfect.shape)
    assert retrieval_metrics(perfect)["rsum"] == pytest.approx(600.0)
    assert retrieval_metrics(perfect)["i2t_medr"] == 1.0
    with pytest.raises(ValueError, match=r"expected n_captions = 5 x n_images = 20"):
        i2t(np.zeros((4, 19)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        t2i(np.full((1, 5), np.nan))
    with pytest.raises(ValueError, match="cannot be cut into 5 equal folds"):
        fold_metrics(np.zeros((7, 35)))


def test_chance_level_by_hand_and_by_sampling() -> None:
    # 2 images, 1 caption each: R@1 = 1/2 both ways, R@5 = R@10 = 100; mean rank 1.5
    two = chance_metrics(2, captions_per_image=1)
    assert two == pytest.approx({"i2t_r1": 50.0, "i2t_r5": 100.0, "i2t_r10": 100.0, "t2i_r1": 50.0, "t2i_r5": 100.0,
                                 "t2i_r10": 100.0, "i2t_meanr": 1.5, "t2i_meanr": 1.5, "rsum": 500.0})
    # 10 images x 5 captions: i2t R@1 = 1 - 45/50 = 10%;  t2i R@5 = 5/10
    ten = chance_metrics(10)
    assert ten["i2t_r1"] == pytest.approx(10.0) and ten["t2i_r5"] == pytest.approx(50.0)
    rng = np.random.default_rng(0)
    runs = [retrieval_metrics(rng.standard_normal((4, 20))) for _ in range(3000)]
    expected = chance_metrics(4)
    for key in ("i2t_r1", "t2i_r1", "i2t_meanr", "t2i_meanr", "rsum"):
        assert np.mean([r[key] for r in runs]) == pytest.approx(expected[key], rel=0.03)
