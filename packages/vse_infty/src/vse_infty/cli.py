"""``vse-infty``: train, evaluate, compare, count parameters, measure memory, print the config, run the demo.

    vse-infty train --config f30k_unipt data.root=/data/f30k model.text_encoder=/models/bert-base-uncased
    torchrun --nproc_per_node=4 -m vse_infty train --config coco_unipt ...     # DDP (a shipped recipe name or a file)
    vse-infty eval --checkpoint runs/vse_infty/checkpoint-best.pt [--split test] [data.root=...]
    vse-infty compare runs/vse_infty/result.json                # beside shared/baselines/vse_infty.toml
    vse-infty params --method unipt                             # real-size counts per tower (meta device)
    vse-infty memory --methods unipt,full-finetune              # peak memory of one training step
    vse-infty config > my.yaml                                  # the defaults (UniPT recipe on VSE-infty)
    vse-infty demo                                              # real MiniLM-L6 + EfficientNet-Lite0, minutes on CPU

Errors in the configuration, the data files or a checkpoint, and a non-finite loss, print one line and exit 2.
"""

from __future__ import annotations

import argparse
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
    parser = argparse.ArgumentParser(prog="vse-infty", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_command(sub, "YAML or JSON file, or a shipped recipe name; omitted keys take the UniPT-on-VSE-infty "
                           "defaults")
    p = sub.add_parser("eval", help="evaluate a training checkpoint (its config, with overrides)")
    p.add_argument("--checkpoint", required=True, help="checkpoint-best.pt or checkpoint-last.pt of a run")
    p.add_argument("--split", default=None,
                   help="split to evaluate (default: data.test_split: f30k 'test', coco 'testall' = 5-fold 1K + 5K)")
    p.add_argument("--output", help="result JSON path (default: eval-<split>.json next to the checkpoint)")
    p.add_argument("overrides", nargs="*", metavar=OVERRIDES_METAVAR)
    add_compare_command(sub)
    p = sub.add_parser("params", help="trainable parameters of a method on the real-size towers (meta device)")
    p.add_argument("--method", help="full-finetune, frozen, unipt, lora, adapter, bitfit, lst (default: the "
                                    "config's method.name, unipt)")
    p.add_argument("--config", help="take the model / method sections from this training config")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("overrides", nargs="*", metavar=OVERRIDES_METAVAR)
    p = sub.add_parser("memory", help="peak memory of one training step per method (one subprocess each)")
    p.add_argument("--methods", default="unipt,full-finetune")
    p.add_argument("--config", help="take the model section from this training config")
    p.add_argument("--batch", type=int, default=2, help="images (and captions) per step")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--output", default="runs/vse_infty_memory.json", help="where the JSON rows are written")
    p.add_argument("overrides", nargs="*", metavar=OVERRIDES_METAVAR)
    sub.add_parser("config", help="print the default configuration as YAML")
    add_demo_command(sub, "frozen real MiniLM-L6 + EfficientNet-Lite0 on synthetic image-caption pairs: UniPT vs "
                          "full fine-tuning", out="runs/demo/vse_infty")
    return parser


def _errors() -> tuple[type[BaseException], ...]:
    """The exception types reported as one line with exit status 2."""
    from peft_core.checkpoint import CheckpointError
    from peft_core.runtime.session import NonFiniteLossError
    from peft_core.targeting import TargetError

    from vse_infty.checkpointing import TrainCheckpointError
    from vse_infty.config import ConfigError
    from vse_infty.data.layout import DataFormatError
    from vse_infty.model import CheckpointError as ModelCheckpointError

    return (ConfigError, DataFormatError, ModelCheckpointError, CheckpointError, TargetError, TrainCheckpointError,
            NonFiniteLossError, FileNotFoundError)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    forwarded = forward_compare(argv)
    if forwarded is not None:
        return forwarded
    args = _parser().parse_args(argv)
    if args.command == "config":
        from vse_infty.config import TrainConfig, dump_yaml

        print(dump_yaml(TrainConfig()), end="")
        return 0
    return report_errors(lambda: _run(args), _errors())


def _run(args: argparse.Namespace) -> int:
    if args.command == "train":
        from vse_infty.config import load_config
        from vse_infty.train import run_training

        run_training(load_config(args.config, args.overrides))
        return 0
    if args.command == "eval":
        from vse_infty.train import run_evaluation

        run_evaluation(args.checkpoint, args.overrides, split=args.split, output=args.output)
        return 0
    if args.command == "params":
        from vse_infty.config import load_config
        from vse_infty.reporting import print_param_counts

        method = [f"method.name={args.method}"] if args.method else []
        config = load_config(args.config, [*method, *args.overrides])
        return print_param_counts(config, as_json=args.json)
    if args.command == "memory":
        from vse_infty.reporting import memory_main

        return memory_main([m.strip() for m in args.methods.split(",") if m.strip()], args.config, args.overrides,
                           batch=args.batch, device=args.device, output=Path(args.output))
    from vse_infty.demo import run_demo

    run_demo(args.out, quick=args.quick, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
