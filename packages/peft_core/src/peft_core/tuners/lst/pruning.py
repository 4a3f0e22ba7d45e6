"""Structured pruning that initialises LST side blocks from the frozen backbone blocks.

Each side block keeps ``1/r`` of the rows / columns of every backbone weight. Which ones is decided per *unit* of an
index group (:mod:`peft_core.tuners.lst.families`): the score of a unit is the L1 norm of the importance of every
weight slice that belongs to it (group L1, summed over all the parameters that share the unit)::

    score_res[j]  = sum over side blocks b, params P of b with a "res" dim, of  sum |I_P[..., j, ...]|
                    (+ |I| of the stacks' final norms)                     one residual set for the whole model
    score_g[u]    = sum over params P of the block with a g dim of  sum |I_P[..., u, ...]|   (g = attn, xattn, ffn;
                    other dims restricted to the kept residual units)
    keep          = the top units (attention: the top head_dim / r units inside every head)

with ``I = |W|`` (weight magnitude) or ``I = sum_batches grad^2`` (diagonal empirical Fisher, upstream
``load_side_pretrained_weights fisher-v2`` with 1024 samples). Upstream ylsung/Ladder-Side-Tuning
``seq2seq/pruning/pruning_methods.py:pruning_without_residual`` (Torch-Pruning ``L1Strategy``) instead chains the
selection through the network - the rows kept in each attention output / FFN output projection decide the columns of
the next layer - so consecutive blocks disagree on which residual dimensions they keep although they add into the
same residual stream; here one residual set is used throughout, and attention inner dimensions are kept per head
(upstream v2 ignores head boundaries, its v3 ``AttnL1Strategy`` keeps whole heads).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from peft_core.tuners.lst.families import Dims

HEAD_GROUPS = ("attn", "xattn")


def top_units(scores: torch.Tensor, keep: int, groups: int = 1) -> torch.Tensor:
    """Sorted indices of the ``keep`` largest ``scores``; with ``groups`` > 1 the vector is split into ``groups``
    equal contiguous parts (attention heads) and ``keep / groups`` are kept in each. Ties keep the lower index."""
    n = scores.numel()
    if groups < 1 or n % groups or keep % groups or not 0 < keep <= n:
        raise ValueError(f"cannot keep {keep} of {n} units in {groups} equal groups")
    per = scores.reshape(groups, n // groups)
    order = torch.argsort(per, dim=1, descending=True, stable=True)[:, : keep // groups]
    idx = order + torch.arange(groups, device=scores.device)[:, None] * (n // groups)
    return idx.flatten().sort().values


def unit_scores(importance: torch.Tensor, dims: Dims, group: str,
                selected: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """L1 of ``importance`` over every dimension except the one of ``group``; dimensions whose group already has
    ``selected`` indices are restricted to them first."""
    if dims.count(group) != 1:
        raise ValueError(f"group {group!r} must occur once in dims {dims}")
    imp = importance.detach().abs().float()
    for j, g in enumerate(dims):
        if g != group and selected and g in selected:
            imp = imp.index_select(j, selected[g].to(imp.device))
    axis = dims.index(group)
    other = [j for j in range(imp.dim()) if j != axis]
    return imp.sum(dim=other) if other else imp


def slice_param(full: torch.Tensor, dims: Dims, selected: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``full`` restricted to the ``selected`` indices of each dimension's group (``None`` dims are kept)."""
    out = full
    for j, g in enumerate(dims):
        if g is not None:
            out = out.index_select(j, selected[g].to(out.device))
    return out


def select_indices(
    blocks: list[tuple[Mapping[str, torch.Tensor], Mapping[str, Dims], Mapping[str, int], int]],
    extra_residual: list[torch.Tensor],
    keep_residual: int,
) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Choose the residual units and each block's inner units.

    Args:
        blocks: per side block ``(importance by parameter name, dims by parameter name, units to keep per group
            ({"attn": .., "xattn": .., "ffn": ..}), number of heads)``.
        extra_residual: importances of other residual-width vectors (final norms), added to the residual score.
        keep_residual: side width ``d / r``.

    Returns ``(residual indices, [per block {group: indices}])``; each block dict also holds ``"res"``.
    """
    res_score: torch.Tensor | None = None
    for imps, dims, _, _ in blocks:
        for name, imp in imps.items():
            if "res" in dims[name]:
                s = unit_scores(imp, dims[name], "res")
                res_score = s if res_score is None else res_score + s
    for vec in extra_residual:
        s = vec.detach().abs().float().reshape(-1)
        res_score = s if res_score is None else res_score + s
    if res_score is None:
        raise ValueError("no residual-width parameter to score")
    res = top_units(res_score, keep_residual)
    chosen = []
    for imps, dims, keeps, heads in blocks:
        sel = {"res": res}
        for group in ("attn", "xattn", "ffn"):
            score = None
            for name, imp in imps.items():
                if group in dims[name]:
                    s = unit_scores(imp, dims[name], group, {"res": res})
                    score = s if score is None else score + s
            if score is not None:
                sel[group] = top_units(score, keeps[group], heads if group in HEAD_GROUPS else 1)
        chosen.append(sel)
    return res, chosen
