"""Retrieval evaluation as upstream: R@1/5/10, medr, meanr, rsum; COCO 5-fold 1K and 5K; Flickr30K 1K."""

from vse_infty.evaluation.encode import encode_split
from vse_infty.evaluation.evaluate import evaluate_split, metrics_from_embeddings
from vse_infty.evaluation.metrics import chance_metrics, fold_metrics, i2t, retrieval_metrics, similarity, t2i

__all__ = ["chance_metrics", "encode_split", "evaluate_split", "fold_metrics", "i2t", "metrics_from_embeddings",
           "retrieval_metrics", "similarity", "t2i"]
