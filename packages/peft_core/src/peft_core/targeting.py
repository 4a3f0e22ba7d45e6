r"""Selecting the modules a method is attached to.

A target is chosen by a regular expression (full match on the dotted module name), a list of name suffixes
(``"q_proj"`` matches ``encoder.layers.0.self_attn.q_proj``; a suffix matches whole dotted components only and may
itself be a pattern, e.g. ``r"layer\.\d+\.output\.dense"``), and/or
module class names. Resolution happens before the model is touched, so a bad target never leaves a half-modified
model; a target that matches nothing raises :class:`TargetError` listing candidate module names.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

from torch import nn

from peft_core.config import as_list


class TargetError(ValueError):
    """No module matched, or a matched module cannot carry the method."""


def _name_matches(name: str, pattern: str | Sequence[str]) -> bool:
    r"""A string is a regular expression matched against the whole dotted name; a list holds suffixes, each matching
    whole trailing components (``"q_proj"``, or a pattern such as ``r"layer\.\d+\.output\.dense"``)."""
    if isinstance(pattern, str):
        return re.fullmatch(pattern, name) is not None
    return any(name == s or name.endswith("." + s) or re.fullmatch(rf"(?:.*\.)?(?:{s})", name) for s in pattern)


def _type_matches(module: nn.Module, types: Sequence[str] | None) -> bool:
    if not types:
        return True
    names = {cls.__name__ for cls in type(module).__mro__}
    return any(t in names for t in types)


def find_targets(
    model: nn.Module,
    target_modules: str | Sequence[str] | None,
    *,
    target_types: Sequence[str] | None = None,
    exclude_modules: str | Sequence[str] | None = None,
    what: str = "method",
) -> list[tuple[str, nn.Module]]:
    """Return ``(name, module)`` for every module selected by the spec, in model order.

    Raises :class:`TargetError` naming the spec and listing a few candidate module names when nothing matches.
    """
    if target_modules is None and not target_types:
        raise TargetError(f"{what}: no target_modules or target_types given and the method has no default here")
    if isinstance(target_modules, str):
        try:
            re.compile(target_modules)
        except re.error as exc:
            raise TargetError(
                f"{what}: target_modules={target_modules!r} is not a valid regular expression: {exc}"
            ) from None
    out: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if not name:
            continue
        if target_modules is not None and not _name_matches(name, target_modules):
            continue
        if not _type_matches(module, target_types):
            continue
        if exclude_modules is not None and _name_matches(name, exclude_modules):
            continue
        out.append((name, module))
    if not out:
        raise TargetError(
            f"{what}: target_modules={target_modules!r} target_types={list(target_types or [])} matched no module; "
            f"candidates: {candidate_names(model, target_modules, target_types)}"
        )
    return out


def candidate_names(
    model: nn.Module, target_modules: str | Sequence[str] | None = None, target_types: Sequence[str] | None = None
) -> list[str]:
    """A few module names close to what was asked for (or a sample of leaf modules), for error messages."""
    names = [n for n, m in model.named_modules() if n and _type_matches(m, target_types)]
    if not names:
        names = [n for n, _ in model.named_modules() if n]
    wanted = as_list(target_modules)
    close: list[str] = []
    if wanted:
        tails = {n.split(".")[-1]: n for n in names}
        for w in wanted:
            for t in difflib.get_close_matches(w.split(".")[-1], list(tails), n=3, cutoff=0.4):
                close.append(f"{tails[t]} ({t})")
    if close:
        return sorted(set(close))[:8]
    leaves = [n for n, m in model.named_modules() if n and not list(m.children())]
    return (leaves or names)[:8]


def get_parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """Parent module and attribute name of the dotted module ``name``."""
    if "." in name:
        parent_name, child = name.rsplit(".", 1)
        return model.get_submodule(parent_name), child
    return model, name
