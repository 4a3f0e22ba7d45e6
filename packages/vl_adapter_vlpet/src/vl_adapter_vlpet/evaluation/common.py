"""Pairing predictions with references: every reference id needs exactly one prediction."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def aligned(task: str, predictions: Mapping[Any, Any], references: Mapping[Any, Any]) -> list[tuple[str, Any, Any]]:
    """``[(id, prediction, reference)]`` in reference order (ids compared as strings).

    Raises ``ValueError`` when references are empty or ``None`` (an unlabelled split), when a reference id has no
    prediction, or when a prediction has no reference.
    """
    preds = {str(k): v for k, v in predictions.items()}
    refs = {str(k): v for k, v in references.items()}
    if not refs:
        raise ValueError(f"{task}: no references to score against; expected {{id: reference}} of a labelled split")
    unlabelled = [k for k, v in refs.items() if v is None]
    if unlabelled:
        raise ValueError(f"{task}: {len(unlabelled)} item(s) have no reference (an unlabelled split?), e.g. "
                         f"{unlabelled[:3]}; expected labelled items")
    missing = [k for k in refs if k not in preds]
    extra = [k for k in preds if k not in refs]
    if missing or extra:
        raise ValueError(f"{task}: {len(missing)} reference id(s) without prediction (e.g. {missing[:3]}) and "
                         f"{len(extra)} prediction id(s) without reference (e.g. {extra[:3]}); expected the same ids")
    return [(k, preds[k], ref) for k, ref in refs.items()]
