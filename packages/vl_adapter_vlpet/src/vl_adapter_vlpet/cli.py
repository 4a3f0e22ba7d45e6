"""``vl-pet``: train, evaluate, compare, count parameters, measure memory, list methods, print configs, run the demo.

    vl-pet train --config configs/vl-pet-large-bart.yaml data.root=/data/datasets model.pretrained=/models/bart-base
    torchrun --nproc_per_node=4 -m vl_adapter_vlpet train --config my.yaml        # DDP
    vl-pet eval --checkpoint runs/vl-pet-large-bart/checkpoint-best.pt [--split val] [section.key=value ...]
    vl-pet eval --config configs/vl-pet-large-bart.yaml model.upstream_checkpoint=LAST.pth model.pretrained=...
    vl-pet compare runs/vl-pet-large-bart/results/*.json                      # vs shared/baselines/vl_pet.toml
    vl-pet params [--backbone bart-base] [--json]       # real-size trainable % of every method next to Table 2
    vl-pet memory --backbone bart-base --methods vl-pet-large,full-finetune --batch-size 8
    vl-pet methods                                      # the methods and their upstream scripts
    vl-pet config [vl-pet-large-t5]                     # the defaults, or a shipped recipe, as YAML
    vl-pet demo [--quick]                               # synthetic multitask set, tiny VL-BART, minutes on a CPU

Configuration, data, checkpoint and non-finite-loss errors print one ``error: ...`` line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from peft_core.runtime.cli import (
    OVERRIDES_METAVAR,
    add_compare_command,
    add_demo_command,
    add_train_command,
    forward_compare,
    report_errors,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vl-pet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_command(sub, "YAML or JSON file, or a shipped recipe name (vl-pet config --list)")
    p = sub.add_parser("eval", help="evaluate a training checkpoint (or a configured model) on every task's test "
                                    "(or val) split")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="checkpoint-best.pt or checkpoint-last.pt of a run")
    which.add_argument("--config", help="no training checkpoint: the model this config builds (e.g. with "
                                        "model.upstream_checkpoint=LAST.pth)")
    p.add_argument("--split", choices=["test", "val"], default="test")
    p.add_argument("--output", help="output folder (default: eval-<split> beside the checkpoint)")
    p.add_argument("overrides", nargs="*", metavar=OVERRIDES_METAVAR)
    add_compare_command(sub)
    p = sub.add_parser("params", help="real-size trainable parameters of every method next to the paper's Params %%")
    p.add_argument("--backbone", choices=["bart-base", "t5-base"], action="append",
                   help="repeatable; default: both")
    p.add_argument("--json", action="store_true", help="print JSON rows instead of the table")
    p = sub.add_parser("memory", help="memory and time of one training step per method (one process each)")
    p.add_argument("--backbone", choices=["bart-base", "t5-base"], default="bart-base")
    p.add_argument("--methods", default="vl-pet-large,full-finetune")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--vis-tokens", type=int, default=36, help="visual tokens per example (6 x 6 CLIP grid)")
    p.add_argument("--text-len", type=int, default=20)
    p.add_argument("--target-len", type=int, default=20)
    p.add_argument("--steps", type=int, default=2, help="measured steps (after one warm-up step)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--feat-dim", type=int, default=2048, help="visual feature size (CLIP RN101 grid: 2048)")
    p.add_argument("--config-overrides", default="{}", help="JSON transformers config fields (other model sizes)")
    p.add_argument("--json", dest="json_out", help="also write the rows to this JSON file")
    sub.add_parser("methods", help="list the methods, their upstream scripts and Table 2 / 9 percentages")
    p = sub.add_parser("config", help="print the default configuration, or a shipped recipe, as YAML")
    p.add_argument("recipe", nargs="?", help="a shipped recipe (e.g. vl-pet-large-bart); omit for the defaults")
    p.add_argument("--list", action="store_true", help="list the shipped recipes")
    add_demo_command(sub, "tiny VL-BART on a synthetic multitask set: VL-PET-large, VL-Adapter, LoRA and full "
                          "fine-tuning at the same budget", out="runs/demo/vl_adapter_vlpet")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    forwarded = forward_compare(argv)
    if forwarded is not None:
        return forwarded
    args = _parser().parse_args(argv)
    if args.command in ("train", "eval", "demo"):
        return _guarded(args)
    if args.command == "config":
        return _config(args)
    if args.command == "methods":
        return _methods()
    if args.command == "params":
        return _params(args)
    return _memory(args)


def _guarded(args: argparse.Namespace) -> int:
    """Run train / eval / demo; known user-facing errors become one line and exit status 2."""
    from peft_core.results import RunResultError
    from peft_core.runtime.session import NonFiniteLossError

    from vl_adapter_vlpet.checkpointing import TrainCheckpointError
    from vl_adapter_vlpet.config import ConfigError
    from vl_adapter_vlpet.data import DataFormatError
    from vl_adapter_vlpet.models import UpstreamCheckpointError

    def action() -> None:
        if args.command == "train":
            from vl_adapter_vlpet.config import load_config
            from vl_adapter_vlpet.train import run_training

            run_training(load_config(args.config, args.overrides))
        elif args.command == "eval":
            from vl_adapter_vlpet.train import run_evaluation

            run_evaluation(args.checkpoint, args.overrides, args.split, args.output, config_file=args.config)
        else:
            from vl_adapter_vlpet.demo import run_demo

            run_demo(args.out, quick=args.quick, seed=args.seed)

    return report_errors(action, (ConfigError, DataFormatError, TrainCheckpointError, UpstreamCheckpointError,
                                  NonFiniteLossError, RunResultError, FileNotFoundError))


def recipe_files() -> dict[str, Path]:
    """The shipped recipes (``configs/*.yaml``) by name."""
    from peft_core.runtime.config import recipe_files as shipped

    return shipped("vl_adapter_vlpet")


def _config(args: argparse.Namespace) -> int:
    recipes = recipe_files()
    if args.list:
        print("\n".join(sorted(recipes)))
        return 0
    if args.recipe is None:
        from vl_adapter_vlpet.config import TrainConfig, dump_yaml

        print(dump_yaml(TrainConfig()), end="")
        return 0
    if args.recipe not in recipes:
        print(f"error: no recipe {args.recipe!r}; expected one of {sorted(recipes)}", file=sys.stderr)
        return 2
    print(recipes[args.recipe].read_text(encoding="utf-8"), end="")
    return 0


def _methods() -> int:
    from vl_adapter_vlpet.methods import METHODS, NOT_AVAILABLE

    for name, spec in METHODS.items():
        print(f"{name}: {spec.description}")
        for backbone, recipe in spec.recipes.items():
            percent = f"{recipe.percent}%" if recipe.percent is not None else "no row"
            print(f"  {backbone}: {recipe.script} (lr {recipe.lr:g}, batch {recipe.batch_size}; {recipe.table} "
                  f"{percent}); trains {recipe.trains}")
    for name, reason in NOT_AVAILABLE.items():
        print(f"{name}: not available: {reason}")
    return 0


def _params(args: argparse.Namespace) -> int:
    from vl_adapter_vlpet.counts import format_counts, real_size_counts

    backbones = args.backbone or ["bart-base", "t5-base"]
    if args.json:
        print(json.dumps([row.to_dict() for b in backbones for row in real_size_counts(b)], indent=1))
        return 0
    for backbone in backbones:
        print(f"{backbone}: real-size VL model on the meta device; 'upstream %' counts zero-initialised deltas of "
              "existing biases / norms once, as upstream's in-place training (the paper's convention)")
        print(format_counts(real_size_counts(backbone)))
        print()
    return 0


def _memory(args: argparse.Namespace) -> int:
    from vl_adapter_vlpet.memory import format_measurements, measure_isolated

    try:
        overrides = json.loads(args.config_overrides)
    except json.JSONDecodeError as exc:
        print(f"error: --config-overrides {args.config_overrides!r} is not JSON ({exc})", file=sys.stderr)
        return 2
    rows = []
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        try:
            rows.append(measure_isolated(args.backbone, method, args.batch_size, n_vis_tokens=args.vis_tokens,
                                         text_len=args.text_len, target_len=args.target_len, device=args.device,
                                         steps=args.steps, feat_dim=args.feat_dim, config_overrides=overrides))
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print(format_measurements(rows))
    by_method = {r["method"]: r for r in rows}
    if "full-finetune" in by_method:
        full = by_method["full-finetune"]
        for r in rows:
            if r is not full:
                step = r["step_mb"] / max(full["step_mb"], 1e-9)
                print(f"{r['method']} / full-finetune: peak {r['peak_mb'] / full['peak_mb']:.2f}x, step memory "
                      f"{step:.2f}x, step time {r['step_s'] / full['step_s']:.2f}x")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
