"""Per-run set-up shared by the task packages: logging, seeding, device choice and the NaN guard."""

from __future__ import annotations

import logging
import math
import random
from pathlib import Path

import numpy as np
import torch

from peft_core.runtime.distributed import DistInfo


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite: the run stops instead of training on garbage."""


def check_finite(loss: torch.Tensor | float, where: str) -> float:
    """``loss`` as a float; raises :class:`NonFiniteLossError` naming ``where`` (epoch / step) if not finite."""
    value = float(loss.item() if isinstance(loss, torch.Tensor) else loss)
    if not math.isfinite(value):
        raise NonFiniteLossError(f"loss is {value} at {where}; stopping (lower the learning rate, disable AMP "
                                 "or resume from the last checkpoint)")
    return value


def resolve_device(name: str, info: DistInfo | None = None) -> torch.device:
    """``auto`` -> CUDA if available else CPU; under DDP each process gets ``cuda:LOCAL_RANK``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and info is not None and info.enabled:
        return torch.device("cuda", info.local_rank)
    return torch.device(name)


def setup_logging(log: logging.Logger, path: Path | None, main: bool) -> None:
    """INFO to stderr and (main process) to ``path``; handlers of earlier runs in this process are replaced."""
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    log.setLevel(logging.INFO if main else logging.WARNING)
    log.propagate = False
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    stream = logging.StreamHandler()
    stream.setFormatter(fmt)
    log.addHandler(stream)
    if path is not None and main:
        path.parent.mkdir(parents=True, exist_ok=True)
        file = logging.FileHandler(path, encoding="utf-8")
        file.setFormatter(fmt)
        log.addHandler(file)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
