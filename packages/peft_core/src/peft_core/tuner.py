"""How a method finds its hosts in a model and builds its per-host layers.

:meth:`Tuner.plan` resolves and validates every target and returns factories, without touching the model;
:func:`peft_core.model.add_adapter` only mutates the model once the whole plan is valid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from peft_core.config import PetlConfig
from peft_core.layer import MethodLayer
from peft_core.targeting import TargetError, find_targets


@dataclass
class PlannedLayer:
    host_name: str
    host: nn.Module
    build: Callable[[], MethodLayer]


class Tuner:
    """Base tuner: one layer per module selected by the config's targeting fields."""

    config_cls: type[PetlConfig] = PetlConfig

    def default_targets(self, model: nn.Module, config: PetlConfig) -> tuple[str | list[str] | None, list[str] | None]:
        """``(target_modules, target_types)`` used when the config gives neither."""
        return None, None

    def check_host(self, name: str, module: nn.Module, config: PetlConfig) -> None:
        """Raise :class:`TargetError` if ``module`` cannot carry this method."""

    def create_layer(self, name: str, module: nn.Module, config: PetlConfig) -> MethodLayer:
        raise NotImplementedError

    def resolve(self, model: nn.Module, config: PetlConfig) -> list[tuple[str, nn.Module]]:
        targets, types = config.target_modules, config.target_types
        if targets is None and not types:
            targets, types = self.default_targets(model, config)
        return find_targets(
            model, targets, target_types=types, exclude_modules=config.exclude_modules, what=config.method
        )

    def plan(self, model: nn.Module, config: PetlConfig) -> list[PlannedLayer]:
        planned = []
        for name, module in self.resolve(model, config):
            try:
                self.check_host(name, module, config)
            except TargetError as exc:
                raise TargetError(f"{config.method}: module {name!r} ({type(module).__name__}): {exc}") from None
            planned.append(PlannedLayer(name, module, _bind(self.create_layer, name, module, config)))
        return planned


def _bind(fn: Callable, *args: object) -> Callable[[], MethodLayer]:
    return lambda: fn(*args)
