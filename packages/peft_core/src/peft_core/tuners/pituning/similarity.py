"""pi-Tuning step 2b: task similarity from Fisher embeddings and automatic helper-task selection.

Upstream: TencentARC/pi-Tuning @ 3b60701 ``OFA/results/task_emb_post_process.ipynb`` (Task2Vec-normalised cosine)::

    e0' = e0 / (e0 + e1 + eps)        e1' = e1 / (e0 + e1 + eps)        (elementwise, flattened tensors)
    sim(tensor) = 1 - cosine_distance(e0', e1') = <e0', e1'> / (|e0'| |e1'|)
    sim(task0, task1) = mean of sim(tensor) over the tensors present in both embeddings

Differences from upstream: upstream skipped a tensor for a target task when the cosine against *any* later task
raised a warning (``warnings.filterwarnings('error')`` + bare ``except``), so a row depended on which other tasks were
in the list; here a tensor is skipped per pair, only when its cosine is undefined (an all-zero normalised vector or
non-finite values), with a warning naming it. The matrix is symmetric with a unit diagonal, as upstream's; upstream
rounded to 4 decimals and picked the helper tasks by hand, :func:`select_helper_tasks` picks them by rank.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Mapping

import numpy as np
import torch

from .fisher import FisherEmbedding

Embedding = FisherEmbedding | Mapping[str, torch.Tensor]


def _tensors(e: Embedding) -> Mapping[str, torch.Tensor]:
    return e.tensors if isinstance(e, FisherEmbedding) else e


def _tensor_cosine(e0: torch.Tensor, e1: torch.Tensor, eps: float) -> float | None:
    """Task2Vec-normalised cosine of one flattened tensor pair (float64); ``None`` when undefined."""
    a, b = e0.detach().reshape(-1).double().cpu(), e1.detach().reshape(-1).double().cpu()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return None
    denom = a + b + eps
    a, b = a / denom, b / denom
    norm = a.norm() * b.norm()
    if not (norm > 0 and torch.isfinite(norm)):
        return None
    return float(torch.dot(a, b) / norm)


def task_similarity(e0: Embedding, e1: Embedding, eps: float = 1e-6) -> float:
    """Mean over shared tensors of the Task2Vec-normalised cosine similarity of two Fisher embeddings.

    ``sim = mean_t cos(e0_t / (e0_t + e1_t + eps), e1_t / (e0_t + e1_t + eps))`` over the tensor names ``t`` present
    in both. Tensors whose cosine is undefined (all-zero or non-finite) are skipped with one warning listing them;
    ``nan`` when none is left. ``ValueError`` when no name is shared or a shared name has two shapes.
    """
    t0, t1 = _tensors(e0), _tensors(e1)
    shared = [n for n in t0 if n in t1]
    if not shared:
        raise ValueError("the two embeddings share no parameter name")
    for name in shared:
        if t0[name].shape != t1[name].shape:
            raise ValueError(
                f"parameter {name!r} has shape {tuple(t0[name].shape)} in the first embedding and "
                f"{tuple(t1[name].shape)} in the second"
            )
    sims, skipped = [], []
    for name in shared:
        cos = _tensor_cosine(t0[name], t1[name], eps)
        if cos is None:
            skipped.append(name)
        else:
            sims.append(cos)
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} tensor(s) with an undefined cosine (all-zero or non-finite Fisher): {skipped}",
            stacklevel=2,
        )
    return float(np.mean(sims)) if sims else math.nan


def similarity_matrix(embeddings: Mapping[str, Embedding], eps: float = 1e-6) -> tuple[list[str], np.ndarray]:
    """Pairwise :func:`task_similarity`: ``(names, matrix)``, symmetric float64 with a unit diagonal (as upstream)."""
    names = list(embeddings)
    mat = np.eye(len(names), dtype=np.float64)
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            mat[i, j] = mat[j, i] = task_similarity(embeddings[names[i]], embeddings[names[j]], eps)
    return names, mat


def select_helper_tasks(
    target: str,
    embeddings: Mapping[str, Embedding],
    k: int | None = None,
    threshold: float | None = None,
    eps: float = 1e-6,
) -> list[tuple[str, float]]:
    """Helper tasks for ``target``: ``[(task, similarity), ...]`` most similar first, ``target`` itself excluded.

    ``k``: keep the top ``k`` (among those ``>= threshold`` when both are given); ``k=None``: keep every task with
    similarity ``>= threshold``. Both ``None`` is a ``ValueError``. Tasks with an undefined (``nan``) similarity are
    left out; ties are broken by task name.
    """
    if k is None and threshold is None:
        raise ValueError("give k (top-k helper tasks) or threshold (minimum similarity), or both")
    if k is not None and k < 0:
        raise ValueError(f"k={k!r} is not allowed; expected None or an integer >= 0")
    if target not in embeddings:
        raise KeyError(f"target task {target!r} is not among the embeddings {list(embeddings)}")
    scored = [(name, task_similarity(embeddings[target], e, eps)) for name, e in embeddings.items() if name != target]
    scored = [(n, s) for n, s in scored if not math.isnan(s) and (threshold is None or s >= threshold)]
    scored.sort(key=lambda item: (-item[1], item[0]))
    return scored if k is None else scored[:k]


def fisher_report(embeddings: Mapping[str, Embedding], eps: float = 1e-6, width: int = 160) -> str:
    """The task-similarity matrix as a plain-text ``rich`` table (for a CLI to print)."""
    from rich.console import Console
    from rich.table import Table

    names, mat = similarity_matrix(embeddings, eps)
    table = Table(title="pi-Tuning task similarity (Task2Vec-normalised Fisher cosine)")
    table.add_column("task", style="bold")
    for name in names:
        table.add_column(name, justify="right")
    for i, name in enumerate(names):
        table.add_row(name, *(f"{v:.4f}" for v in mat[i]))
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, force_terminal=False).print(table)
    return buf.getvalue()
