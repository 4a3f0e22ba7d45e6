"""Load upstream VL-PET / VL-Adapter checkpoints (``LAST.pth``, ``BEST.pth``) into a VL model built here.

Upstream ``TrainerBase.save`` writes ``torch.save(self.model.state_dict())`` of the (often DDP-wrapped) VLBart / VLT5:
a flat dict of tensors, keys possibly prefixed ``module.`` (HenryHZY/VL-PET@7430cad ``src/trainer_base.py:save``;
``load_checkpoint`` strips the prefix and loads with ``strict=False``). Keys are mapped with
:mod:`vl_adapter_vlpet.models.upstream_keys` after the method's adapters are on the model, every shape is checked
before anything is copied, and :class:`UpstreamLoadReport` lists what was loaded, what the file lacks, what the
model lacks, shape mismatches and task-specific tensors that cannot be represented (upstream without
``--use_single_*`` keeps one adapter per task). Upstream trains biases / norms in place where peft_core trains a
delta: the host tensor takes the upstream value and the delta is set to zero.

:func:`to_upstream_state_dict` is the inverse (our model -> an upstream-style dict, deltas merged into their hosts,
one copy per task as upstream's shared ModuleDicts store them); a round trip reproduces every tensor bit for bit.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft_core.io import load_tensor_file
from torch import nn

from vl_adapter_vlpet.models.upstream_keys import (
    PROMPT_CONTAINER,
    TASK,
    TASKS,
    UpstreamName,
    split_method_name,
    upstream_names,
)

WRAPPERS = ("state_dict", "model", "module")
TIED = ("encoder.visual_embedding.obj_order_embedding.weight",
        "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight")
"""Upstream keys with no tensor of their own here: the visual embedding's reference to the token table (a tied
copy) and VL-T5's unused cross-attention relative bias (``_keys_to_ignore_on_load_unexpected`` upstream)."""


class UpstreamCheckpointError(ValueError):
    """The file cannot be read, or nothing in it maps to the model (the message names the file and keys)."""


@dataclass
class UpstreamLoadReport:
    """What :func:`load_upstream_checkpoint` did (names are ours unless stated)."""

    source: str
    loaded: list[str] = field(default_factory=list)
    deltas_zeroed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    missing_method: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    task_specific: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every tensor of the model was found with the right shape and no upstream tensor was left over."""
        return not (self.missing or self.missing_method or self.unexpected or self.mismatched or self.task_specific)

    def table(self) -> str:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"upstream checkpoint {self.source}", min_width=60)
        for column in ("status", "count", "keys"):
            table.add_column(column, justify="right" if column == "count" else "left")
        rows = [
            ("loaded", self.loaded, ""),
            ("deltas set to 0 (host loaded in place)", self.deltas_zeroed, ""),
            ("missing model tensors (file lacks)", self.missing, ", ".join(self.missing[:12])),
            ("missing method tensors (left as initialised)", self.missing_method, ", ".join(self.missing_method[:12])),
            ("unexpected (model lacks)", self.unexpected, ", ".join(self.unexpected[:12])),
            ("ignored (tied copies)", self.ignored, ", ".join(self.ignored)),
            ("shape mismatch (not loaded)", self.mismatched,
             ", ".join(f"{k} <- {u}: file {a} vs model {b}" for k, u, a, b in self.mismatched[:12])),
            ("task-specific (differ per task, not loaded)", self.task_specific, ", ".join(self.task_specific[:12])),
        ]
        for name, keys, text in rows:
            if keys or name == "loaded":
                table.add_row(name, str(len(keys)), text)
        buffer = io.StringIO()
        Console(file=buffer, width=160, color_system=None).print(table)
        return buffer.getvalue()


def read_upstream_state_dict(source: str | Path | dict[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
    """The tensors of an upstream checkpoint (file or dict), ``module.`` prefixes stripped; returns (dict, source)."""
    if isinstance(source, dict):
        data: Any = source
        name = "state dict"
    else:
        path = Path(source)
        name = str(path)
        data = load_tensor_file(path, UpstreamCheckpointError, "torch checkpoint file (model.upstream_checkpoint)")
    if not isinstance(data, dict):
        raise UpstreamCheckpointError(f"{name}: expected a dict of tensors (a state_dict), got {type(data).__name__}")
    for key in WRAPPERS:
        inner = data.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            data = inner
            break
    tensors = {(k[len("module."):] if k.startswith("module.") else k): v
               for k, v in data.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise UpstreamCheckpointError(f"{name}: no tensors found; top-level keys: {list(data)[:8]}")
    return tensors, name


def _find(name: UpstreamName, state: dict[str, torch.Tensor]) -> list[str]:
    if not name.templated:
        return [name.template] if name.template in state else []
    head = name.template.split(PROMPT_CONTAINER)[0].split(TASK)[0]
    pattern = name.pattern()
    return sorted((k for k in state if k.startswith(head) and pattern.fullmatch(k)),
                  key=lambda k: (next((i for i, t in enumerate(TASKS) if f".{t}." in k), len(TASKS)), k))


def load_upstream_checkpoint(model: nn.Module, source: str | Path | dict[str, Any], family: str,
                             strict: bool = False) -> UpstreamLoadReport:
    """Load an upstream checkpoint into ``model`` (a VLSeq2Seq with the method applied); see the module docstring.

    Raises :class:`UpstreamCheckpointError` when no tensor maps, or with ``strict=True`` when the report is not ``ok``.
    """
    state, name = read_upstream_state_dict(source)
    report = UpstreamLoadReport(source=name)
    ours = model.state_dict()
    names = upstream_names(model, family)
    used: set[str] = set()
    plan: list[tuple[str, torch.Tensor]] = []
    deltas: list[str] = []
    for key, target in names.items():
        is_method = split_method_name(key) is not None
        if target is None:
            (report.missing_method if is_method else report.missing).append(key)
            continue
        found = _find(target, state)
        if not found:
            (report.missing_method if is_method else report.missing).append(key)
            continue
        used.update(found)
        if target.delta:
            deltas.append(key)
            continue
        value = state[found[0]]
        if any(not torch.equal(state[k], value) for k in found[1:]):
            report.task_specific.append(key)
            continue
        if tuple(value.shape) != tuple(ours[key].shape):
            report.mismatched.append((key, found[0], tuple(value.shape), tuple(ours[key].shape)))
            continue
        plan.append((key, value))
    report.ignored = sorted(k for k in state if k not in used and k.endswith(TIED))
    report.unexpected = sorted(k for k in state if k not in used and not k.endswith(TIED))
    if not plan:
        examples = [t.template for t in list(names.values())[:3] if t is not None]
        raise UpstreamCheckpointError(f"{name}: no tensor maps to this model (first keys of the file: "
                                      f"{list(state)[:4]}; expected keys like {examples}); is it a checkpoint of "
                                      "the same backbone (VL-BART / VL-T5)?")
    if strict and not report.ok:
        raise UpstreamCheckpointError(f"{name}: does not fit the model strictly:\n{report.table()}")
    loaded_hosts = {names[k].template for k, _ in plan if names[k] is not None}
    with torch.no_grad():
        for key, value in plan:
            ours[key].copy_(value.to(dtype=ours[key].dtype))
            report.loaded.append(key)
        for key in deltas:
            target = names[key]
            if target is not None and target.template in loaded_hosts:
                ours[key].zero_()
                report.deltas_zeroed.append(key)
    return report


def to_upstream_state_dict(model: nn.Module, family: str, tasks: tuple[str, ...] = TASKS) -> dict[str, torch.Tensor]:
    """The upstream-style state dict of ``model`` (deltas merged into their hosts; one copy per task)."""
    ours = model.state_dict()
    names = upstream_names(model, family)
    out: dict[str, torch.Tensor] = {}
    for key, target in names.items():
        if target is None or target.delta:
            continue
        for upstream in target.keys(tasks):
            out[upstream] = ours[key].detach().clone()
    for key, target in names.items():
        if target is not None and target.delta:
            host = target.template
            if host not in out:
                raise KeyError(f"{key}: delta on {host!r}, which the model does not hold")
            out[host] = out[host] + ours[key].detach().to(out[host].dtype)
    return out
