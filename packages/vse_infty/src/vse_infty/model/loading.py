"""Reading checkpoint files and reporting what a loader did (shared by the CNN and upstream VSE-infty loaders).

``torch.load`` runs with ``weights_only=True`` (tensors and plain containers; upstream's ``argparse.Namespace`` of
``opt`` is allowed), so a file with other Python objects is refused unless the caller trusts it (``allow_pickle``).
DataParallel / DDP ``module.`` prefixes are stripped; ``.safetensors`` files are read with safetensors.
"""

from __future__ import annotations

import argparse
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

NBT = "num_batches_tracked"
WRAPPERS = ("state_dict", "model", "module")


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model; the message names the file and the keys."""


@dataclass
class LoadReport:
    """What a loader did. ``mapped``: model key -> file key; ``ignored``: file key -> reason; ``mismatched``:
    ``(model key, file shape, model shape)`` (never loaded)."""

    source: str
    mapped: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every model key was filled and every file key was used or knowingly ignored."""
        return not self.missing and not self.unexpected and not self.mismatched

    def summary(self) -> str:
        lines = [f"{self.source}: {len(self.mapped)} mapped, {len(self.missing)} missing, {len(self.unexpected)} "
                 f"unexpected, {len(self.ignored)} ignored, {len(self.mismatched)} shape mismatches"]
        for title, keys in (("missing (model has, file lacks)", self.missing),
                            ("unexpected (file has, model lacks)", self.unexpected)):
            if keys:
                shown = ", ".join(keys[:8]) + (f", ... (+{len(keys) - 8})" if len(keys) > 8 else "")
                lines.append(f"  {title}: {shown}")
        reasons: dict[str, int] = {}
        for reason in self.ignored.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        lines.extend(f"  ignored {n}: {reason}" for reason, n in reasons.items())
        lines.extend(f"  shape mismatch {k}: file {a} vs model {b}" for k, a, b in self.mismatched[:8])
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "mapped": len(self.mapped), "missing": self.missing,
                "unexpected": self.unexpected, "ignored": self.ignored,
                "mismatched": [[k, list(a), list(b)] for k, a, b in self.mismatched]}


# ------------------------------------------------------------------------------------------------ reading files
def read_checkpoint(path: str | Path, *, allow_pickle: bool = False) -> Any:
    """Load a ``.pth`` / ``.pt`` / ``.bin`` (torch.load, tensors only unless ``allow_pickle``) or ``.safetensors``.

    Upstream checkpoints carry an ``argparse.Namespace`` (``opt``), which is allowed without ``allow_pickle``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    with path.open("rb") as fh:
        head = fh.read(1)
    if not zipfile.is_zipfile(path) and head != b"\x80":
        raise CheckpointError(f"{path}: not a readable torch checkpoint (neither torch.save's zip archive nor a "
                              "pickle stream)")
    try:
        if allow_pickle:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: holds Python objects besides tensors ({str(exc).splitlines()[0]}); load it "
                              "with allow_pickle=True only if you trust the file") from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({exc})") from None


def strip_prefix(state: Mapping[str, Tensor], prefix: str = "module.") -> dict[str, Tensor]:
    """Remove ``prefix`` from every key that has it (DataParallel / DDP ``module.``)."""
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def unwrap_state_dict(obj: Any, path: str | Path) -> dict[str, Tensor]:
    """The tensor dict of a plain state dict or one wrapped under ``state_dict`` / ``model`` / ``module``."""
    for _ in range(2):
        if isinstance(obj, Mapping) and not any(isinstance(v, Tensor) for v in obj.values()):
            inner = next((obj[w] for w in WRAPPERS if isinstance(obj.get(w), Mapping)), None)
            if inner is not None:
                obj = inner
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors (optionally under 'state_dict' / 'model'), "
                              f"got {type(obj).__name__}")
    return strip_prefix(dict(obj))


def tensor_kind(key: str) -> str:
    """Last name component (``weight``, ``bias``, ``running_mean`` ...)."""
    return key.rsplit(".", 1)[-1]
