"""Nested-dataclass configurations read from a YAML or JSON file plus ``section.key=value`` overrides.

A task package declares its configuration as a dataclass whose fields are section dataclasses::

    @dataclass
    class TrainConfig:
        model: ModelConfig = field(default_factory=ModelConfig)
        optim: OptimConfig = field(default_factory=OptimConfig)
        def validate(self) -> None: ...          # optional, called after building

    config = load_config(TrainConfig, "run.yaml", ["optim.epochs=30", "model.pretrained=null"])

Defaults, then the file, then the overrides (values parsed as YAML scalars). Unknown sections or keys, wrong types
and invalid values raise :class:`ConfigError` naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """An invalid configuration (the message names the file and the key)."""


def coerce(key: str, value: Any, annotation: Any, source: str) -> Any:
    """Check ``value`` against a field annotation (``int``, ``float | None``, ``list``, ``dict``, ...).

    ints pass as floats; scalars pass as strings; a ``list[...]`` field takes a list (or a tuple).
    """
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"{source}: {key}=None is not allowed; expected {annotation}")
    for option in options:
        origin = typing.get_origin(option) or option
        if origin is bool and isinstance(value, bool):
            return value
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if origin is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if origin is str and isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        if origin is dict and isinstance(value, dict):
            return value
        if origin is list and isinstance(value, list | tuple):
            return list(value)
    raise ConfigError(f"{source}: {key}={value!r} ({type(value).__name__}) is not allowed; expected {annotation}")


def section_types(root: type) -> dict[str, type]:
    """``{section name: section dataclass}`` of a root config dataclass."""
    hints = typing.get_type_hints(root)
    return {f.name: hints[f.name] for f in dataclasses.fields(root)}


def from_dict(root: type[T], data: dict[str, Any], source: str = "config") -> T:
    """Build a ``root`` config from nested dicts; unknown keys are errors. Each section's ``validate()`` (if it has
    one), then the root's, are called; a ``ValueError`` / ``TypeError`` raised by a section (its ``__post_init__`` or
    ``validate``) becomes a :class:`ConfigError` naming ``source``."""
    sections_of = section_types(root)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections {sorted(sections_of)}, "
                          f"got {type(data).__name__}")
    unknown = sorted(set(data) - set(sections_of))
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {unknown}; expected some of {sorted(sections_of)}")
    sections = {}
    for name, cls in sections_of.items():
        values = data.get(name) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section {name!r} must be a mapping, got {type(values).__name__}")
        hints = typing.get_type_hints(cls)
        known = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(values) - known)
        if bad:
            raise ConfigError(f"{source}: unknown key(s) {[f'{name}.{k}' for k in bad]}; "
                              f"expected some of {sorted(f'{name}.{k}' for k in known)}")
        kwargs = {k: coerce(f"{name}.{k}", v, hints[k], source) for k, v in values.items()}
        try:
            sections[name] = cls(**kwargs)
            check = getattr(sections[name], "validate", None)
            if callable(check):
                check()
        except ConfigError:
            raise
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{source}: {exc}") from None
    config = root(**sections)
    validate = getattr(config, "validate", None)
    if callable(validate):
        validate()
    return config


def read_file(path: str | Path) -> dict[str, Any]:
    """Nested dict from a ``.yaml`` / ``.yml`` / ``.json`` file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from None
    return data or {}


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values parsed as YAML scalars: ``3``, ``0.1``, ``true``, ``null``)."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or key.count(".") != 1:
            raise ConfigError(f"override {item!r}: expected section.key=value (e.g. optim.epochs=30)")
        section, name = key.split(".")
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            value = text
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            raise ConfigError(f"override {item!r}: section {section!r} is not a mapping")
        data[section][name] = value
    return data


def load_config(root: type[T], path: str | Path | None = None, overrides: list[str] | None = None,
                package: str | None = None) -> T:
    """Defaults, then the file (if any; with ``package``, a name of its shipped recipes too), then the overrides."""
    if path is not None and package is not None:
        path = resolve_config_path(path, package)
    data = read_file(path) if path is not None else {}
    source = str(path) if path is not None else "overrides"
    return from_dict(root, apply_overrides(data, overrides or []), source)


class ConfigRoot:
    """Mixin of a package's root config dataclass (its sections as fields): ``to_dict`` for checkpoints / results."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SHIPPED_CONFIGS = "configs"
"""The folder of a task package that holds its shipped recipes (``<package>/configs/*.yaml``)."""


def recipe_files(package: str) -> dict[str, Path]:
    """The recipes a task package ships (``<package>/configs/*.yaml``) by name."""
    folder = resources.files(package) / SHIPPED_CONFIGS
    return {Path(str(f)).stem: Path(str(f)) for f in folder.iterdir() if str(f).endswith(".yaml")}


def resolve_config_path(path: str | Path, package: str) -> Path:
    """``path`` if it is a file, else the recipe ``package`` ships under that name (``f30k_unipt`` or
    ``f30k_unipt.yaml``); neither is a :class:`ConfigError` listing the shipped names."""
    path = Path(path)
    if path.is_file():
        return path
    recipes = recipe_files(package)
    name = path.stem if path.suffix in (".yaml", ".yml") else path.name
    if path.parent == Path(".") and name in recipes:
        return recipes[name]
    raise ConfigError(f"{path}: config file not found; expected a YAML / JSON file or a shipped recipe name "
                      f"({', '.join(sorted(recipes))})")


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def dump_yaml(config: Any) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def check_positive(values: dict[str, float], strict: bool = True) -> None:
    """Raise ConfigError for the first ``key: value`` not > 0 (``strict``) or not >= 0."""
    for key, value in values.items():
        if (value <= 0) if strict else (value < 0):
            raise ConfigError(f"{key}={value!r} is not allowed; expected a number {'>' if strict else '>='} 0")


def check_choices(values: dict[str, tuple[Any, tuple]]) -> None:
    """Raise ConfigError for the first ``key: (value, allowed)`` whose value is not allowed."""
    for key, (value, allowed) in values.items():
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not allowed; expected one of {list(allowed)}")


@dataclasses.dataclass
class RunSection:
    """The ``run`` section every task package shares (a package subclasses it to add its own keys).

    ``output_dir``: where ``config.yaml``, ``log.txt``, the checkpoints and the results go. ``seed``: process ``r``
    is seeded with ``seed + r``. ``device``: ``auto`` (CUDA when available), ``cpu`` or ``cuda[:N]``. ``amp``:
    autocast on CUDA (ignored on the CPU). ``resume``: ``auto`` (``output_dir/checkpoint-last.pt`` when present),
    ``none`` or a checkpoint path. ``stop_after``: stop after N epochs of this invocation (the same command
    resumes). ``eval_every``: validate every N epochs. ``eval_before``: also test the untrained model.
    ``final_test``: test the best (validation) weights at the end. ``progress``: progress bars.
    """

    output_dir: str = "runs"
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    resume: str = "auto"
    stop_after: int | None = None
    eval_every: int = 1
    eval_before: bool = False
    final_test: bool = True
    progress: bool = True

    def check(self) -> None:
        """Raise :class:`ConfigError` naming the ``run.`` key of an invalid shared value."""
        if self.stop_after is not None:
            check_positive({"run.stop_after": self.stop_after})
        check_positive({"run.eval_every": self.eval_every}, strict=False)
        if self.resume not in ("auto", "none") and not Path(self.resume).is_file():
            raise ConfigError(f"run.resume={self.resume!r}: expected 'auto', 'none' or an existing checkpoint file")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ConfigError(f"run.device={self.device!r} is not allowed; expected 'auto', 'cpu' or 'cuda[:N]'")
