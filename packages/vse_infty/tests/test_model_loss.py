"""VSE++ hinge loss against a hand-computed 3 x 3 case, and upstream's max-violation warm-up."""

from __future__ import annotations

import pytest
import torch
from vse_infty.model.loss import ContrastiveLoss, uses_max_violation, warmup_alpha

# S[i, j] = similarity of image i and caption j; diagonal = positives 0.9, 0.6, 0.4; margin 0.2.
S = torch.tensor([[0.9, 0.8, 0.1],
                  [0.5, 0.6, 0.3],
                  [0.2, 0.7, 0.4]])
# negative captions per image:  max(0, .2 + S[i, j] - S[i, i]) -> row 0: .1, 0 ; row 1: .1, 0 ; row 2: 0, .5
# negative images per caption:  max(0, .2 + S[i, j] - S[j, j]) -> col 0: 0, 0 ; col 1: .4, .3 ; col 2: 0, .1
SUM_LOSS = (0.1 + 0.1 + 0.5) + (0.4 + 0.3 + 0.1)
MAX_LOSS = (0.1 + 0.1 + 0.5) + (0.0 + 0.4 + 0.1)


def _embeddings() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.eye(3), S.t().clone()  # img_i . cap_j = S[i, j]


def test_sum_of_hinges_over_all_negatives() -> None:
    img, cap = _embeddings()
    loss = ContrastiveLoss(margin=0.2)(img, cap)
    assert loss.item() == pytest.approx(SUM_LOSS, abs=1e-6)


def test_hardest_negative_and_switching_it_on() -> None:
    img, cap = _embeddings()
    criterion = ContrastiveLoss(margin=0.2)
    assert criterion(img, cap).item() == pytest.approx(SUM_LOSS, abs=1e-6)
    criterion.max_violation = True
    assert criterion(img, cap).item() == pytest.approx(MAX_LOSS, abs=1e-6)


def test_max_violation_gradient_reaches_only_the_hardest_negatives() -> None:
    img, cap = _embeddings()
    cap.requires_grad_(True)
    ContrastiveLoss(margin=0.2, max_violation=True)(img, cap).backward()
    grad_on_s = cap.grad.t()  # d loss / d S[i, j], since S = img @ cap.T with img = I
    # hardest negative caption per image (row maxima): (0, 1), (1, 0), (2, 1); hardest negative image per caption
    # (column maxima): (0, 1), (1, 2); column 0 has no positive hinge, so (1, 0) and (2, 0) get nothing from it
    nonzero = {(i, j) for i in range(3) for j in range(3) if i != j and grad_on_s[i, j] != 0}
    assert nonzero == {(0, 1), (1, 0), (2, 1), (1, 2)}


def test_zero_loss_when_positives_win_by_the_margin() -> None:
    img = torch.eye(3)
    assert ContrastiveLoss(margin=0.2, max_violation=True)(img, img).item() == 0.0


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="same shape"):
        ContrastiveLoss()(torch.randn(3, 4), torch.randn(2, 4))


def test_warmup_schedule_as_upstream() -> None:
    assert not uses_max_violation(0, 1) and uses_max_violation(1, 1) and uses_max_violation(5, 1)
    assert warmup_alpha(epoch=1, step=0, steps_per_epoch=10, warmup_epochs=1) == 0.0
    assert warmup_alpha(epoch=1, step=5, steps_per_epoch=10, warmup_epochs=1) == 0.5
    assert warmup_alpha(epoch=0, step=5, steps_per_epoch=10, warmup_epochs=1) == 1.0
    assert warmup_alpha(epoch=2, step=5, steps_per_epoch=10, warmup_epochs=1) == 1.0
    with pytest.raises(ValueError, match="steps_per_epoch"):
        warmup_alpha(1, 0, 0, 1)
