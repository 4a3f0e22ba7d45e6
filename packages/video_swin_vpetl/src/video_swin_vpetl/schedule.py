"""Learning rate: ``lr = blr * batch * world_size / 256``, per-iteration linear warm-up, then a half-cycle cosine.

    e = epoch + step / steps_per_epoch                 (fractional epoch, updated every iteration)
    lr(e) = lr * e / warmup                            if e < warmup
    lr(e) = min_lr + (lr - min_lr) * (1 + cos(pi * (e - warmup) / (epochs - warmup))) / 2   otherwise

Upstream: bruceyo/V-PETL@661198dd38:util/lr_sched.py:adjust_learning_rate (MAE), main.py (``args.lr = args.blr *
eff_batch_size / 256``).
"""

from __future__ import annotations

import math

from torch.optim import Optimizer


def scaled_lr(blr: float, batch_size: int, world_size: int = 1) -> float:
    """``blr * batch_size * world_size / 256`` (README recipe: 0.1 * 16 / 256 = 0.00625)."""
    return blr * batch_size * world_size / 256


def lr_at(epoch: float, lr: float, min_lr: float, warmup_epochs: float, epochs: int) -> float:
    """The learning rate at fractional epoch ``epoch``."""
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    if epochs <= warmup_epochs:
        return lr
    progress = (epoch - warmup_epochs) / (epochs - warmup_epochs)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: Optimizer, value: float) -> None:
    """Set every parameter group's lr (times its ``lr_scale`` if it has one)."""
    for group in optimizer.param_groups:
        group["lr"] = value * group.get("lr_scale", 1.0)
