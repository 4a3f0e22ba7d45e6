"""Method configurations: one dataclass per method, JSON round trip with a format version.

Every method config derives from :class:`PetlConfig`. A config names its method (``method``), the modules it
targets (:class:`~peft_core.targeting.TargetSpec` fields) and the modules that stay trainable besides the method's
own parameters (``modules_to_save``, e.g. a task head).

JSON files carry ``format_version``; keys a newer release added and this release does not know are dropped with a
warning (forward compatibility, as Hugging Face PEFT does); invalid values raise ``ValueError`` naming the field and
the allowed values.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

FORMAT_VERSION = 1
"""Version of the on-disk config format. Bump when a field changes meaning."""

C = TypeVar("C", bound="PetlConfig")


def check_choice(field: str, value: Any, allowed: Iterable[Any]) -> None:
    """Raise ``ValueError`` naming ``field`` and the allowed values when ``value`` is not one of them."""
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{field}={value!r} is not allowed; expected one of {allowed}")


def check_positive(field: str, value: float, *, allow_zero: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is > 0 (or >= 0 with ``allow_zero``)."""
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{field}={value!r} is not allowed; expected a number {bound}")


def check_probability(field: str, value: float) -> None:
    """Raise ``ValueError`` unless 0 <= value < 1."""
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{field}={value!r} is not allowed; expected a probability in [0, 1)")


@dataclasses.dataclass
class PetlConfig:
    """Fields shared by every method.

    Attributes:
        target_modules: regular expression (full match on the dotted module name) or list of name suffixes
            selecting the modules the method is attached to. ``None`` uses the method's default for the model.
        target_types: module class names (e.g. ``["Linear", "Conv2d"]``) a target must also be an instance of.
        exclude_modules: regular expression or suffix list of modules never targeted.
        modules_to_save: name suffixes of modules kept fully trainable (task heads, visual embeddings).
    """

    method: ClassVar[str] = "base"

    target_modules: str | list[str] | None = None
    target_types: list[str] | None = None
    exclude_modules: str | list[str] | None = None
    modules_to_save: list[str] | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field; raise ``ValueError`` naming the field and the allowed values."""
        for name in ("target_modules", "exclude_modules"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str | list):
                raise ValueError(f"{name}={value!r} is not allowed; expected a regex string or a list of suffixes")
        if self.target_types is not None and not isinstance(self.target_types, list):
            raise ValueError(f"target_types={self.target_types!r} is not allowed; expected a list of class names")

    # ----------------------------------------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        data = {f.name: _to_jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return {"method": self.method, "format_version": FORMAT_VERSION, **data}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], *, source: str = "config") -> C:
        """Build the config from a dict, dropping unknown keys with a warning.

        Raises ``ValueError`` if the dict names another method or a newer incompatible format.
        """
        data = dict(data)
        method = data.pop("method", cls.method)
        if method != cls.method:
            raise ValueError(f"{source}: method={method!r} cannot be read as a {cls.__name__} (method {cls.method!r})")
        version = data.pop("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or version < 1:
            raise ValueError(f"{source}: format_version={version!r} is not allowed; expected an integer >= 1")
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(
                f"{source}: dropping keys unknown to this release of {cls.__name__} "
                f"(written by format_version {version}, this release reads {FORMAT_VERSION}): {unknown}",
                UserWarning,
                stacklevel=2,
            )
        return cls(**{k: v for k, v in data.items() if k in known})

    def replace(self: C, **changes: Any) -> C:
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)

    def save(self, path: str | Path) -> None:
        from peft_core.io import atomic_write_text

        atomic_write_text(Path(path), self.to_json())


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    return value


def config_from_dict(data: dict[str, Any], *, source: str = "config") -> PetlConfig:
    """Read any registered method's config from a dict (dispatch on its ``method`` key)."""
    from peft_core.registry import get_method

    if "method" not in data:
        raise ValueError(f"{source}: missing key 'method'; expected one of the registered methods")
    return get_method(data["method"]).config_cls.from_dict(data, source=source)


def load_config(path: str | Path) -> PetlConfig:
    """Read a config JSON file written by :meth:`PetlConfig.save`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: config file not found") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with a 'method' key")
    return config_from_dict(data, source=str(path))


def as_list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return list(value)
