"""Trainable-parameter reports: totals, percentage, and a breakdown per module group.

Convention (used everywhere in this project, including ``python -m peft_core params``):
``total`` counts every parameter of the model *with* the method's parameters (the base model plus adapters),
``percent = 100 * trainable / total``. Tied parameters are counted once. A report can also express the
percentage relative to the base model alone (``percent_of_base``), which is how some papers count.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from torch import nn

from peft_core.layer import PETL_ATTR


@dataclass
class GroupCount:
    group: str
    trainable: int
    total: int


@dataclass
class ParamReport:
    trainable: int
    total: int
    base_total: int
    groups: list[GroupCount] = field(default_factory=list)

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

    @property
    def percent_of_base(self) -> float:
        return 100.0 * self.trainable / self.base_total if self.base_total else 0.0

    def to_dict(self) -> dict:
        out = asdict(self)
        out["percent"] = self.percent
        out["percent_of_base"] = self.percent_of_base
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self, title: str = "parameters") -> str:
        """A plain-text table (fixed width, printable anywhere)."""
        rows = [(g.group, f"{g.trainable:,}", f"{g.total:,}", _pct(g.trainable, g.total)) for g in self.groups]
        rows.append(("TOTAL", f"{self.trainable:,}", f"{self.total:,}", f"{self.percent:.4f}%"))
        header = ("group", "trainable", "total", "trainable %")
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
        line = "  ".join("-" * w for w in widths)
        fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        return "\n".join([title, fmt(header), line, *[fmt(r) for r in rows[:-1]], line, fmt(rows[-1])])


def _pct(a: int, b: int) -> str:
    return f"{100.0 * a / b:.4f}%" if b else "-"


def _group_of(name: str, depth: int) -> str:
    if f".{PETL_ATTR}." in f".{name}":
        parts = name.split(".")
        idx = parts.index(PETL_ATTR)
        adapter = parts[idx + 1] if idx + 1 < len(parts) else "?"
        return f"[{adapter}] adapter"
    parts = name.split(".")[:-1]
    return ".".join(parts[:depth]) or "(root)"


def count_parameters(model: nn.Module, depth: int = 1) -> ParamReport:
    """Count trainable and total parameters of ``model``, grouped by the first ``depth`` name components.

    Adapter parameters are grouped per adapter name. Shared (tied) parameters are counted once.
    """
    seen: set[int] = set()
    groups: dict[str, GroupCount] = {}
    trainable = total = base_total = 0
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = p.numel()
        group = _group_of(name, depth)
        g = groups.setdefault(group, GroupCount(group, 0, 0))
        g.total += n
        total += n
        if f".{PETL_ATTR}." not in f".{name}":
            base_total += n
        if p.requires_grad:
            g.trainable += n
            trainable += n
    return ParamReport(trainable, total, base_total, list(groups.values()))
