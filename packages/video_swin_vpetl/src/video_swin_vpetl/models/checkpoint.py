"""Load official Video Swin checkpoints (mmaction format) into :class:`VideoSwinTransformer`.

The file is a dict holding the weights directly or under ``state_dict`` (mmaction), ``model`` (MAE / AdaptFormer
style) or ``module`` (DeepSpeed style, AdaptFormer issues #14/#21). Key prefixes ``module.`` (DDP) and ``backbone.``
are stripped (upstream: ``checkpoint_model[k[9:]]`` for ``backbone.*`` then ``load_state_dict(strict=False)`` in
bruceyo/V-PETL@661198dd38:main.py). The mmaction head ``cls_head.fc_cls.{weight,bias}`` maps to the I3D head's
``head.fc_cls.*``, or, reshaped to a 1x1x1 kernel, to the V-PETL head's ``head.fc.*`` when the class counts agree.

Nothing is loaded silently: :class:`LoadReport` lists the loaded, missing, unexpected and shape-mismatched keys
(a mismatch names the key and both shapes) and prints as a table. Parameters added by peft_core methods
(``.petl.``) are reported apart from the backbone's missing keys.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft_core.io import load_tensor_file
from torch import nn

WRAPPERS = ("state_dict", "model", "module")
PREFIXES = ("module.", "backbone.")
HEAD_PREFIX = "cls_head."


class CheckpointLoadError(ValueError):
    """The checkpoint cannot be read or does not fit the model (the message names the file and the keys)."""


@dataclass
class LoadReport:
    """What :func:`load_checkpoint` did. ``mismatched`` holds ``(key, checkpoint shape, model shape)``."""

    source: str
    wrapper: str | None = None
    loaded: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    method_params: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    skipped_head: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every backbone parameter was loaded (head and method parameters aside)."""
        return not self.missing_backbone and not any(not k.startswith("head.") for k, _, _ in self.mismatched)

    @property
    def missing_backbone(self) -> list[str]:
        return [k for k in self.missing if not k.startswith("head.")]

    def table(self) -> str:
        """A readable summary: counts, then every missing / unexpected / mismatched key."""
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"checkpoint {self.source}" + (f" [{self.wrapper}]" if self.wrapper else ""),
                      min_width=60)
        table.add_column("status")
        table.add_column("count", justify="right")
        table.add_column("keys")
        rows = [
            ("loaded", self.loaded, ""),
            ("renamed (cls_head -> head)", list(self.renamed),
             ", ".join(f"{a} -> {b}" for a, b in self.renamed.items())),
            ("missing (model has, file lacks)", self.missing, ", ".join(self.missing)),
            ("method parameters (peft_core, not in file)", self.method_params, ""),
            ("unexpected (file has, model lacks)", self.unexpected, ", ".join(self.unexpected)),
            ("shape mismatch (not loaded)", self.mismatched,
             ", ".join(f"{k}: file {tuple(a)} vs model {tuple(b)}" for k, a, b in self.mismatched)),
            ("head skipped", self.skipped_head, ", ".join(self.skipped_head)),
        ]
        for name, keys, text in rows:
            if keys or name == "loaded":
                table.add_row(name, str(len(keys)), text)
        buffer = io.StringIO()
        Console(file=buffer, width=160, color_system=None).print(table)
        return buffer.getvalue()


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """The tensors of a checkpoint file and the wrapper key they were under (None if top level)."""
    path = Path(path)
    data = load_tensor_file(path, CheckpointLoadError, "checkpoint file")
    return unwrap(data, str(path))


def unwrap(data: Any, source: str = "checkpoint") -> tuple[dict[str, torch.Tensor], str | None]:
    """Find the tensor dict inside ``data`` (top level or under one of :data:`WRAPPERS`)."""
    if not isinstance(data, dict):
        raise CheckpointLoadError(f"{source}: expected a dict of tensors, got {type(data).__name__}")
    for key in WRAPPERS:
        inner = data.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return dict(inner), key
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointLoadError(
            f"{source}: no tensors found at the top level or under {list(WRAPPERS)}; top-level keys: {list(data)[:8]}")
    return tensors, None


def normalize_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip ``module.`` and ``backbone.`` prefixes; ``cls_head.`` becomes ``head.``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = key
        for prefix in PREFIXES:
            if new.startswith(prefix):
                new = new[len(prefix):]
        if new.startswith(HEAD_PREFIX):
            new = "head." + new[len(HEAD_PREFIX):]
        out[new] = value
    return out


def _map_head(state: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], report: LoadReport) -> None:
    """``head.fc_cls.weight (K, F)`` -> ``head.fc.weight (K, F, 1, 1, 1)`` for the V-PETL head when shapes allow."""
    weight = state.get("head.fc_cls.weight")
    if weight is None or "head.fc_cls.weight" in targets or "head.fc.weight" not in targets:
        return
    if weight.dim() == 2 and tuple(targets["head.fc.weight"].shape) == (*weight.shape, 1, 1, 1):
        state["head.fc.weight"] = weight.reshape(*weight.shape, 1, 1, 1)
        del state["head.fc_cls.weight"]
        report.renamed["cls_head.fc_cls.weight"] = "head.fc.weight"
        if "head.fc_cls.bias" in state:
            state["head.fc.bias"] = state.pop("head.fc_cls.bias")
            report.renamed["cls_head.fc_cls.bias"] = "head.fc.bias"


def load_checkpoint(model: nn.Module, checkpoint: str | Path | dict, *, load_head: bool = True,
                    strict: bool = False, verbose: bool = False) -> LoadReport:
    """Load official (or own) Video Swin weights into ``model``; returns a :class:`LoadReport`.

    ``load_head=False`` ignores every ``head.*`` / ``cls_head.*`` key (fine-tuning on a new label set); with
    ``load_head=True`` a head whose class count differs is reported as mismatched and left as initialised.
    ``strict=True`` raises :class:`CheckpointLoadError` when a backbone key is missing, unexpected or mismatched.
    Keys are checked before anything is copied.
    """
    if isinstance(checkpoint, dict):
        raw, wrapper = unwrap(checkpoint, "state dict")
        source = "state dict"
    else:
        raw, wrapper = read_state_dict(checkpoint)
        source = str(checkpoint)
    report = LoadReport(source=source, wrapper=wrapper)
    state = normalize_keys(raw)
    targets = dict(model.state_dict())
    if load_head:
        _map_head(state, targets, report)
    else:
        report.skipped_head = sorted(k for k in state if k.startswith("head."))
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    to_load: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in targets:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(targets[key].shape):
            report.mismatched.append((key, tuple(value.shape), tuple(targets[key].shape)))
        else:
            to_load[key] = value
    for key in targets:
        if key in to_load:
            continue
        if ".petl." in f".{key}":
            report.method_params.append(key)
        elif key not in state and (load_head or not key.startswith("head.")):
            report.missing.append(key)
    if strict:
        bad_unexpected = [k for k in report.unexpected if not k.startswith("head.")]
        if report.missing_backbone or bad_unexpected or [m for m in report.mismatched if not m[0].startswith("head.")]:
            raise CheckpointLoadError(f"{source}: does not fit the model strictly:\n{report.table()}")
    with torch.no_grad():
        for key, value in to_load.items():
            targets[key].copy_(value.to(dtype=targets[key].dtype))
    report.loaded = sorted(to_load)
    report.missing.sort()
    report.unexpected.sort()
    if verbose:
        print(report.table())
    return report
