"""Per-run set-up shared by the task packages: output folder, logging, seeding, device choice and the NaN guard."""

from __future__ import annotations

import logging
import math
import random
from pathlib import Path
from typing import Any, NamedTuple

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


class RunSetup(NamedTuple):
    """Where a run writes (``out``), the device it runs on and whether autocast (CUDA only) is on."""

    out: Path
    device: torch.device
    amp: bool


def start_run(log: logging.Logger, config: Any, info: DistInfo, *, out: Path | None = None, write_config: bool = True,
              log_file: Path | str | None = "log.txt", quiet: bool = False, seed_per_rank: bool = True) -> RunSetup:
    """The common start of a task package's run from its config (``config.run.{output_dir, device, amp, seed}``).

    The main process writes ``config.yaml`` (``write_config``) into ``out`` (default ``run.output_dir``), created
    when something is written there. Logging goes to stderr (WARNING and above with ``quiet``) and to ``log_file``
    (relative to ``out``; None: no file).
    Every process is seeded with ``run.seed + rank`` (``seed_per_rank``, training) or ``run.seed`` (evaluation).
    The device follows ``run.device`` (``auto``: CUDA when available; ``cuda:LOCAL_RANK`` under torchrun); AMP is
    on only on CUDA. The config is logged as YAML.
    """
    from peft_core.runtime.config import dump_yaml

    run = config.run
    out = Path(run.output_dir if out is None else out)
    text = dump_yaml(config)
    if info.is_main and write_config:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(text)
    setup_logging(log, None if log_file is None else out / log_file, info.is_main)
    if quiet:
        for handler in log.handlers:
            if not isinstance(handler, logging.FileHandler):
                handler.setLevel(logging.WARNING)
    device = resolve_device(run.device, info)
    seed_everything(run.seed + (info.rank if seed_per_rank else 0))
    log.info("config\n%s", text)
    return RunSetup(out, device, bool(run.amp) and device.type == "cuda")
