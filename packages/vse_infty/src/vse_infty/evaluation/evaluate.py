"""Evaluate a model on one split as upstream evalrank (woodfrog/vse_infty@3d6e405b3f:lib/evaluation.py).

    Flickr30K test (1K) / COCO test (1K) / any dev split:  retrieval_metrics(img_embs @ cap_embs.T)
    COCO testall (5K images), fold5:   the 5-fold 1K metrics (keys without prefix, mean of the 5 folds)
                                       + the full 5K metrics as ``coco5k_<key>``
    (UniPT VSE-infty/eval.py: ``evalrank(split='testall', fold5=True)`` then ``fold5=False``; F30K ``split='test'``)

``fold5=None`` chooses 5-fold exactly for COCO ``testall``. Every rank returns the same metrics.
"""

from __future__ import annotations

import logging

import torch
from peft_core.runtime.distributed import DistInfo
from torch import nn
from transformers import PreTrainedTokenizerBase

from vse_infty.data.datasets import Transform
from vse_infty.data.layout import SplitData
from vse_infty.data.loaders import make_eval_loaders
from vse_infty.evaluation.encode import encode_split
from vse_infty.evaluation.metrics import fold_metrics, retrieval_metrics, similarity

log = logging.getLogger(__name__)

FOLDS = 5
FOLD_SPLIT = ("coco", "testall")


def metrics_from_embeddings(img_embs, cap_embs, dataset: str, fold5: bool,
                            captions_per_image: int = 5) -> dict[str, float]:
    """Metrics of one split from its embeddings (see the module docstring for the keys)."""
    sims = similarity(img_embs, cap_embs)
    if not fold5:
        return retrieval_metrics(sims, captions_per_image)
    if dataset == "coco" and sims.shape[0] != 5000:
        log.warning("COCO 5-fold evaluation on %d images (upstream: the 5,000 testall images)", sims.shape[0])
    prefix = "coco5k_" if dataset == "coco" else "all_"
    full = {f"{prefix}{k}": v for k, v in retrieval_metrics(sims, captions_per_image).items()}
    return fold_metrics(sims, FOLDS, captions_per_image) | full


def evaluate_split(model: nn.Module, split_data: SplitData, tokenizer: PreTrainedTokenizerBase,
                   transform: Transform | None, batch_size: int, device: torch.device | str,
                   dataset: str | None = None, split: str | None = None, fold5: bool | None = None,
                   amp: bool = False, progress: bool = False, dist_info: DistInfo | None = None, *,
                   max_length: int | None = None, workers: int = 0) -> dict[str, float]:
    """Encode ``split_data`` with ``model`` (``encode_images`` / ``encode_texts``) and compute its metrics."""
    dataset = dataset or split_data.dataset
    split = split or split_data.split
    if fold5 is None:
        fold5 = (dataset, split) == FOLD_SPLIT
    device = torch.device(device)
    image_loader, caption_loader = make_eval_loaders(
        split_data, tokenizer, transform, batch_size, max_length=max_length, workers=workers, dist_info=dist_info,
        pin_memory=device.type == "cuda")
    img_embs, cap_embs = encode_split(model, image_loader, caption_loader, device, amp=amp, progress=progress,
                                      dist_info=dist_info)
    metrics = metrics_from_embeddings(img_embs, cap_embs, dataset, fold5, split_data.captions_per_image)
    log.info("%s %s (%d images, %d captions%s): rsum %.1f, i2t R@1 %.1f, t2i R@1 %.1f", dataset, split,
             split_data.n_images, split_data.n_captions, ", 5-fold" if fold5 else "", metrics["rsum"],
             metrics["i2t_r1"], metrics["t2i_r1"])
    return metrics
