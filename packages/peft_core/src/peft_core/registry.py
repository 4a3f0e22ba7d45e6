"""Registry of methods and of named presets (one config per upstream setting).

A method registers a :class:`Tuner` (how to find its hosts and build its layers) with its config class; a preset is a
named function returning a ready config. ``python -m peft_core params --method NAME`` accepts both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from peft_core.config import PetlConfig
    from peft_core.tuner import Tuner

_METHODS: dict[str, Tuner] = {}
_PRESETS: dict[str, Preset] = {}


@dataclass(frozen=True)
class Preset:
    name: str
    make: Callable[..., PetlConfig]
    description: str
    reference: str = ""


def register_method(tuner: Tuner) -> Tuner:
    name = tuner.config_cls.method
    if name in _METHODS and type(_METHODS[name]) is not type(tuner):
        raise ValueError(f"method {name!r} is already registered by {type(_METHODS[name]).__name__}")
    _METHODS[name] = tuner
    return tuner


def get_method(name: str) -> Tuner:
    _ensure_loaded()
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"method={name!r} is not registered; expected one of {sorted(_METHODS)}") from None


def list_methods() -> list[str]:
    _ensure_loaded()
    return sorted(_METHODS)


def register_preset(name: str, description: str, reference: str = "") -> Callable:
    """Decorator registering ``fn(**overrides) -> PetlConfig`` as preset ``name``."""

    def deco(fn: Callable[..., PetlConfig]) -> Callable[..., PetlConfig]:
        if name in _PRESETS:
            raise ValueError(f"preset {name!r} is already registered")
        _PRESETS[name] = Preset(name, fn, description, reference)
        return fn

    return deco


def get_preset(name: str) -> Preset:
    _ensure_loaded()
    try:
        return _PRESETS[name]
    except KeyError:
        raise ValueError(f"preset={name!r} is not registered; expected one of {sorted(_PRESETS)}") from None


def list_presets() -> list[Preset]:
    _ensure_loaded()
    return [_PRESETS[k] for k in sorted(_PRESETS)]


def make_config(name: str, **overrides: Any) -> PetlConfig:
    """A config from a preset name (``overrides`` replace fields) or from a bare method name."""
    _ensure_loaded()
    if name in _PRESETS:
        return _PRESETS[name].make(**overrides)
    if name in _METHODS:
        return _METHODS[name].config_cls(**overrides)
    raise ValueError(
        f"{name!r} is neither a preset nor a method; presets: {sorted(_PRESETS)}, methods: {sorted(_METHODS)}"
    )


def _ensure_loaded() -> None:
    import peft_core.tuners  # noqa: F401  (registers every built-in method and preset)
