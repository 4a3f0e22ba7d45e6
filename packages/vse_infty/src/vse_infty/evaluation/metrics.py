"""Image-text retrieval metrics exactly as upstream (woodfrog/vse_infty@3d6e405b3f:lib/evaluation.py i2t / t2i).

``sims[i, c]`` = similarity of image ``i`` and caption ``c`` (``img_embs @ cap_embs.T``, upstream compute_sim);
caption ``c`` belongs to image ``c // k`` (k = captions per image, 5).

    i2t: for image i, order the captions by decreasing similarity (``np.argsort(sims[i])[::-1]``);
         rank_i = the best (smallest) 0-based position of its k captions
    t2i: for caption c, order the images by decreasing similarity; rank_c = 0-based position of image c // k
    R@K = 100 * #(rank < K) / #queries (K = 1, 5, 10);  medr = floor(median(rank)) + 1;  meanr = mean(rank) + 1
    rsum = i2t R@1 + R@5 + R@10 + t2i R@1 + R@5 + R@10

COCO 5-fold 1K (upstream ``evalrank(fold5=True)``): the 5K test split cut into 5 consecutive folds of 1,000 images
and their 5,000 captions; every metric (rsum included) is the mean over the folds of the fold's metric.
Ties are ordered as numpy's default argsort orders them, as upstream.
"""

from __future__ import annotations

import math

import numpy as np

CAPTIONS_PER_IMAGE = 5
RECALL_AT = (1, 5, 10)
CHUNK_ELEMENTS = 1 << 24
"""Rows are ranked in chunks of about this many similarities (bounded memory for COCO 5K: 5,000 x 25,000)."""


def _check(sims: np.ndarray, captions_per_image: int) -> np.ndarray:
    sims = np.asarray(sims)
    if sims.ndim != 2 or sims.shape[0] == 0:
        raise ValueError(f"similarity matrix of shape {sims.shape}; expected (n_images, n_captions), n_images > 0")
    if captions_per_image < 1 or sims.shape[1] != captions_per_image * sims.shape[0]:
        raise ValueError(f"similarity matrix of shape {sims.shape}; expected n_captions = {captions_per_image} x "
                         f"n_images = {captions_per_image * sims.shape[0]} (captions image-major)")
    if not np.isfinite(sims).all():
        raise ValueError("the similarity matrix has NaN or infinite entries; the embeddings are not finite")
    return sims


def positions(scores: np.ndarray) -> np.ndarray:
    """``pos[r, j]`` = 0-based position of column ``j`` when row ``r`` is sorted by decreasing score
    (``np.argsort(row)[::-1]``, upstream's ordering)."""
    order = np.argsort(scores, axis=1)[:, ::-1]
    pos = np.empty_like(order)
    np.put_along_axis(pos, order, np.broadcast_to(np.arange(scores.shape[1]), order.shape), axis=1)
    return pos


def _rows_per_chunk(n_cols: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(n_cols, 1))


def i2t_ranks(sims: np.ndarray, captions_per_image: int = CAPTIONS_PER_IMAGE) -> np.ndarray:
    """0-based rank of the best-ranked ground-truth caption of every image, ``(n_images,)``."""
    sims = _check(sims, captions_per_image)
    n_img, n_cap = sims.shape
    ranks = np.empty(n_img, dtype=np.int64)
    step = _rows_per_chunk(n_cap)
    for start in range(0, n_img, step):
        pos = positions(sims[start:start + step])
        rows = np.arange(len(pos))
        gt = (start + rows)[:, None] * captions_per_image + np.arange(captions_per_image)[None]
        ranks[start:start + len(pos)] = pos[rows[:, None], gt].min(axis=1)
    return ranks


def t2i_ranks(sims: np.ndarray, captions_per_image: int = CAPTIONS_PER_IMAGE) -> np.ndarray:
    """0-based rank of the ground-truth image of every caption, ``(n_captions,)``."""
    sims = _check(sims, captions_per_image)
    by_caption = sims.T
    n_cap, n_img = by_caption.shape
    ranks = np.empty(n_cap, dtype=np.int64)
    step = _rows_per_chunk(n_img)
    for start in range(0, n_cap, step):
        pos = positions(by_caption[start:start + step])
        caps = start + np.arange(len(pos))
        ranks[start:start + len(pos)] = pos[np.arange(len(pos)), caps // captions_per_image]
    return ranks


def summarize(ranks: np.ndarray) -> dict[str, float]:
    """``{r1, r5, r10, medr, meanr}`` of 0-based ranks (recalls in %)."""
    ranks = np.asarray(ranks)
    out = {f"r{k}": float(100.0 * np.count_nonzero(ranks < k) / len(ranks)) for k in RECALL_AT}
    out["medr"] = float(np.floor(np.median(ranks)) + 1)
    out["meanr"] = float(ranks.mean() + 1)
    return out


def i2t(sims: np.ndarray, captions_per_image: int = CAPTIONS_PER_IMAGE) -> dict[str, float]:
    """Image-to-text retrieval: ``{r1, r5, r10, medr, meanr}``."""
    return summarize(i2t_ranks(sims, captions_per_image))


def t2i(sims: np.ndarray, captions_per_image: int = CAPTIONS_PER_IMAGE) -> dict[str, float]:
    """Text-to-image retrieval: ``{r1, r5, r10, medr, meanr}``."""
    return summarize(t2i_ranks(sims, captions_per_image))


def retrieval_metrics(sims: np.ndarray, captions_per_image: int = CAPTIONS_PER_IMAGE) -> dict[str, float]:
    """``i2t_r1 .. i2t_meanr, t2i_r1 .. t2i_meanr, rsum`` over the whole matrix."""
    forward, backward = i2t(sims, captions_per_image), t2i(sims, captions_per_image)
    out = {f"i2t_{k}": v for k, v in forward.items()} | {f"t2i_{k}": v for k, v in backward.items()}
    out["rsum"] = sum(forward[f"r{k}"] + backward[f"r{k}"] for k in RECALL_AT)
    return out


def fold_metrics(sims: np.ndarray, folds: int = 5, captions_per_image: int = CAPTIONS_PER_IMAGE
                 ) -> dict[str, float]:
    """Mean over ``folds`` consecutive image folds (each against its own captions) of :func:`retrieval_metrics`.

    Upstream COCO 5-fold 1K: ``sims`` of the 5K test split, folds of 1,000 images / 5,000 captions.
    """
    sims = _check(sims, captions_per_image)
    n_img = sims.shape[0]
    if folds < 1 or n_img % folds:
        raise ValueError(f"{n_img} images cannot be cut into {folds} equal folds; expected a multiple of {folds} "
                         "(COCO testall: 5,000 images -> 5 folds of 1,000)")
    size = n_img // folds
    per_fold = [retrieval_metrics(sims[f * size:(f + 1) * size,
                                       f * size * captions_per_image:(f + 1) * size * captions_per_image],
                                  captions_per_image) for f in range(folds)]
    return {key: float(np.mean([m[key] for m in per_fold])) for key in per_fold[0]}


def chance_metrics(n_images: int, captions_per_image: int = CAPTIONS_PER_IMAGE) -> dict[str, float]:
    """Expected recalls, mean ranks and rsum of a random ranking (the chance level of a split).

    i2t: the best of k ground truths among N = k n captions is in the top K with probability
    1 - C(N - k, K) / C(N, K), and its expected 1-based rank is (N + 1) / (k + 1); t2i: min(K, n) / n and (n + 1) / 2.
    """
    if n_images < 1 or captions_per_image < 1:
        raise ValueError(f"n_images={n_images}, captions_per_image={captions_per_image}; expected both >= 1")
    n_caps = n_images * captions_per_image
    out: dict[str, float] = {}
    for k in RECALL_AT:
        top = min(k, n_caps)
        out[f"i2t_r{k}"] = 100.0 * (1.0 - math.comb(n_caps - captions_per_image, top) / math.comb(n_caps, top))
    for k in RECALL_AT:
        out[f"t2i_r{k}"] = 100.0 * min(k, n_images) / n_images
    out["i2t_meanr"] = (n_caps + 1) / (captions_per_image + 1)
    out["t2i_meanr"] = (n_images + 1) / 2
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in RECALL_AT)
    return out


def similarity(img_embs: np.ndarray, cap_embs: np.ndarray) -> np.ndarray:
    """``img_embs @ cap_embs.T`` (upstream compute_sim; the embeddings are l2-normalised, so cosine)."""
    img_embs, cap_embs = np.asarray(img_embs), np.asarray(cap_embs)
    if img_embs.ndim != 2 or cap_embs.ndim != 2 or img_embs.shape[1] != cap_embs.shape[1]:
        raise ValueError(f"embeddings of shapes {img_embs.shape} and {cap_embs.shape}; expected (n_images, E) and "
                         "(n_captions, E) with one E")
    return img_embs @ cap_embs.T
