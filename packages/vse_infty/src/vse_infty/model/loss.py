"""VSE++ hinge triplet loss and its warm-up, as VSE-infty trains.

Upstream: woodfrog/vse_infty@6809282:lib/loss.py:ContrastiveLoss (Paranioar/UniPT@3fa457d987:VSE-infty/lib/loss.py is
the same). With ``S = img_emb @ cap_emb.T`` (``B x B``, pair ``i`` on the diagonal) and margin ``m``::

    cost_s[i, j]  = max(0, m + S[i, j] - S[i, i])     j != i    (negative captions of image i)
    cost_im[i, j] = max(0, m + S[i, j] - S[j, j])     i != j    (negative images of caption j)
    loss = sum_ij cost_s + sum_ij cost_im                                   (max_violation=False, "VSE0")
    loss = sum_i max_j cost_s[i, j] + sum_j max_i cost_im[i, j]             (max_violation=True, VSE++ hardest)

Warm-up (``train.py``): the sum over all negatives is used for the first ``vse_mean_warmup_epochs`` epochs, the
hardest negative afterwards, and in the first hardest-negative epoch the loss is multiplied by
``warmup_alpha = step / (len(dataset) // batch_size + 1)`` (:func:`warmup_alpha`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ContrastiveLoss(nn.Module):
    """``ContrastiveLoss(margin=0.2, max_violation=False)(img_emb (B, E), cap_emb (B, E)) -> scalar``.

    ``max_violation`` may be switched at any time (upstream ``set_max_violation`` / ``max_violation_on``).
    """

    def __init__(self, margin: float = 0.2, max_violation: bool = False) -> None:
        super().__init__()
        self.margin = float(margin)
        self.max_violation = bool(max_violation)

    def forward(self, img_emb: Tensor, cap_emb: Tensor) -> Tensor:
        if img_emb.dim() != 2 or img_emb.shape != cap_emb.shape:
            raise ValueError(f"ContrastiveLoss expects img_emb and cap_emb of the same shape (B, E), got "
                             f"{tuple(img_emb.shape)} and {tuple(cap_emb.shape)}")
        scores = img_emb @ cap_emb.t()
        diagonal = scores.diag().view(-1, 1)
        cost_s = (self.margin + scores - diagonal).clamp(min=0)
        cost_im = (self.margin + scores - diagonal.t()).clamp(min=0)
        eye = torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
        cost_s = cost_s.masked_fill(eye, 0)
        cost_im = cost_im.masked_fill(eye, 0)
        if self.max_violation:
            cost_s = cost_s.max(1)[0]
            cost_im = cost_im.max(0)[0]
        return cost_s.sum() + cost_im.sum()

    def extra_repr(self) -> str:
        return f"margin={self.margin}, max_violation={self.max_violation}"


def uses_max_violation(epoch: int, vse_mean_warmup_epochs: int) -> bool:
    """Hardest negatives from epoch ``vse_mean_warmup_epochs`` on (upstream ``train.py``: ``epoch >= ...``)."""
    return epoch >= vse_mean_warmup_epochs


def warmup_alpha(epoch: int, step: int, steps_per_epoch: int, warmup_epochs: int) -> float:
    """Loss scale of upstream's warm-up: ``step / steps_per_epoch`` in epoch ``warmup_epochs``, else 1.

    Upstream (Paranioar/UniPT@3fa457d987:VSE-infty/train.py) scales the loss in the first epoch that uses the hardest
    negative (``epoch == vse_mean_warmup_epochs``) by ``float(i) / num_loader_iter`` with ``i`` the 0-based step in
    the epoch and ``num_loader_iter = len(dataset) // batch_size + 1``; pass that as ``steps_per_epoch``.
    """
    if steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch={steps_per_epoch} is not allowed; expected an integer > 0")
    if step < 0:
        raise ValueError(f"step={step} is not allowed; expected an integer >= 0")
    return float(step) / steps_per_epoch if epoch == warmup_epochs else 1.0
