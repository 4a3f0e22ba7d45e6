"""File helpers: atomic writes (temporary file in the same folder, fsynced, renamed over the target) and reading
weights files with errors that name the file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then move ``tmp_path`` onto ``path`` with ``os.replace`` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def load_tensor_file(path: Path | str, error: type[Exception], what: str) -> Any:
    """The content of a weights file: ``.safetensors`` through safetensors, anything else through
    ``torch.load(map_location="cpu", weights_only=True)`` (tensors and plain Python values only).

    A missing or unreadable file raises ``error`` with a message naming ``path`` and ``what`` it was expected to
    be (e.g. ``"upstream checkpoint (model.upstream_checkpoint)"``).
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {what} not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        import torch

        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise error(f"{path}: cannot be read as a {what} ({type(exc).__name__}: {exc})") from None
