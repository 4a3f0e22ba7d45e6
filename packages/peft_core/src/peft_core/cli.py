"""``python -m peft_core``: parameter counts for real-size architectures, presets, and result comparison.

    python -m peft_core params --model bart-base --method lora --r 128 [--json]
    python -m peft_core presets
    python -m peft_core compare RESULT.json [...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from typing import Any

from peft_core.model import add_adapter, mark_trainable
from peft_core.registry import get_method, get_preset, list_methods, list_presets, make_config
from peft_core.report import count_parameters


def _parse_value(text: str, annotation: Any) -> Any:
    """Convert a command-line string to a config field's type (int, float, bool, str, list, None)."""
    if text.lower() in ("none", "null"):
        return None
    kinds = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    names = " ".join(getattr(k, "__name__", str(k)) for k in kinds) + " " + str(annotation)
    if "bool" in names and text.lower() in ("true", "false", "1", "0", "yes", "no"):
        return text.lower() in ("true", "1", "yes")
    if "list" in names:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = [t for t in text.split(",") if t]
        if isinstance(value, list):
            return value
    for cast in (int, float):
        if cast.__name__ in names:
            try:
                return cast(text)
            except ValueError:
                pass
    if "str" in names:
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_overrides(method: str, tokens: list[str]) -> dict[str, Any]:
    """``--r 128 --target-modules q_proj,v_proj`` -> ``{"r": 128, "target_modules": ["q_proj", "v_proj"]}``."""
    cls = get_method(method).config_cls
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--"):
            raise SystemExit(f"error: unexpected argument {tok!r}; expected --field value")
        key = tok[2:].replace("-", "_")
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(tokens):
                raise SystemExit(f"error: option {tok} needs a value")
            value = tokens[i + 1]
            i += 2
        if key not in fields:
            raise SystemExit(f"error: {cls.__name__} has no field {key!r}; fields: {sorted(fields)}")
        out[key] = _parse_value(value, hints.get(key, str))
    return out


def _method_of(name: str) -> str:
    try:
        return get_preset(name).make().method
    except ValueError:
        return get_method(name).config_cls.method


def cmd_params(args: argparse.Namespace, extra: list[str]) -> int:
    from peft_core.zoo import build_model

    method = _method_of(args.method)
    try:
        config = make_config(args.method, **parse_overrides(method, extra))
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    from peft_core.zoo_vl import build_vl_model, needs_vl_model

    if needs_vl_model(config):  # VL presets train the VL-Adapter visual embedding too
        model = build_vl_model(args.model, device=args.device)
    else:
        model = build_model(args.model, device=args.device)
    add_adapter(model, config)
    mark_trainable(model)
    report = count_parameters(model, depth=args.depth)
    if args.json:
        payload = {"model": args.model, "method": args.method, "config": config.to_dict(), **report.to_dict()}
        print(json.dumps(payload, indent=2))
    else:
        print(report.table(f"{args.model} + {args.method}"))
        print(f"trainable {report.trainable:,} of {report.total:,} = {report.percent:.4f}% "
              f"({report.percent_of_base:.4f}% of the {report.base_total:,} base parameters)")
    return 0


def cmd_presets(args: argparse.Namespace, extra: list[str]) -> int:
    for preset in list_presets():
        print(f"{preset.name:28s} {preset.description}" + (f"  [{preset.reference}]" if preset.reference else ""))
    print("\nmethods: " + ", ".join(list_methods()))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "compare":
        from peft_core.compare import compare_main

        return compare_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m peft_core", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("params", help="trainable parameters of a method on a real-size architecture",
                       description="Unknown --field value options override the method config's fields.")
    p.add_argument("--model", required=True, help="architecture name (see peft_core.zoo.MODELS)")
    p.add_argument("--method", required=True, help="preset or method name (see `presets`)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--depth", type=int, default=1, help="module-name depth of the per-group breakdown")
    p.add_argument("--device", default="meta", help="build the model here (default meta: counts only)")
    sub.add_parser("presets", help="list presets and methods")
    sub.add_parser("compare", help="compare results JSON files with the upstream baselines (see compare --help)")
    args, extra = parser.parse_known_args(argv)
    if args.command == "params":
        return cmd_params(args, extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return cmd_presets(args, extra)
