"""``video-swin-vpetl``: train, evaluate, compare, count parameters, measure memory, run the demo.

    video-swin-vpetl train --config hmdb51.yaml data.root=/data/hmdb51 model.pretrained=swin_b_k400.pth
    torchrun --nproc_per_node=4 -m video_swin_vpetl train --config hmdb51.yaml
    video-swin-vpetl eval --checkpoint runs/v_petl/checkpoint-best.pt [data.root=...]
    video-swin-vpetl compare runs/v_petl/result.json
    video-swin-vpetl params --model video-swin-b --method patt-kv-m128
    video-swin-vpetl recipe adaptformer-64+patt-kv-128 --classes 51
    video-swin-vpetl memory --recipes patt-kv-128,full
    video-swin-vpetl config > my.yaml            # the defaults (V-PETL README recipe)
    video-swin-vpetl demo                        # synthetic videos, a few minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import sys

from peft_core.runtime.cli import (
    OVERRIDES_METAVAR,
    add_compare_command,
    add_demo_command,
    add_train_command,
    forward_compare,
    report_errors,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="video-swin-vpetl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_command(sub, "YAML or JSON file; omitted keys take the V-PETL defaults")
    p = sub.add_parser("eval", help="test a training checkpoint (clips x crops views)")
    p.add_argument("--checkpoint", required=True, help="checkpoint-best.pt or checkpoint-last.pt of a run")
    p.add_argument("--split", choices=["test", "val"], default="test", help="data.test_list (multi-view) or val_list")
    p.add_argument("--output", help="result JSON path (default: next to the checkpoint)")
    p.add_argument("overrides", nargs="*", metavar=OVERRIDES_METAVAR)
    add_compare_command(sub)
    p = sub.add_parser("params", help="peft_core parameter counts with the Video Swin models registered",
                       add_help=False)
    p.add_argument("args", nargs=argparse.REMAINDER)
    p = sub.add_parser("recipe", help="trainable parameters of a recipe on a real-size Video Swin (meta device)")
    p.add_argument("recipe", help="e.g. adaptformer-64+patt-kv-128, patt-kv-128, head-only, full")
    p.add_argument("--arch", default="video-swin-b")
    p.add_argument("--classes", type=int, default=51, help="head size (HMDB51: 51, SSv2: 174)")
    p = sub.add_parser("memory", help="peak memory of one training step per recipe (one subprocess each)")
    p.add_argument("--recipes", default="patt-kv-128,full")
    p.add_argument("--arch", default="video-swin-b")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--classes", type=int, default=51)
    p.add_argument("--device", default="cpu")
    sub.add_parser("config", help="print the default configuration as YAML")
    add_demo_command(sub, "synthetic moving-shape videos: pre-train a tiny Video Swin, transfer with PATT and full "
                          "fine-tuning", out="runs/demo")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    forwarded = forward_compare(argv)
    if forwarded is not None:
        return forwarded
    if argv and argv[0] == "params":
        from peft_core.cli import main as peft_main

        import video_swin_vpetl  # noqa: F401  (registers video-swin-t/-s/-b in peft_core.zoo)

        return peft_main(argv)
    args = _parser().parse_args(argv)
    if args.command == "config":
        from video_swin_vpetl.config import TrainConfig, dump_yaml

        print(dump_yaml(TrainConfig()), end="")
        return 0
    if args.command == "recipe":
        from video_swin_vpetl.recipe_counts import print_recipe_counts

        return print_recipe_counts(args.recipe, args.arch, args.classes)
    if args.command == "memory":
        from video_swin_vpetl.memory import memory_main

        return memory_main(args)
    if args.command == "demo":
        from video_swin_vpetl.demo import run_demo

        run_demo(args.out, quick=args.quick, seed=args.seed)
        return 0
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    from peft_core.runtime.session import NonFiniteLossError

    from video_swin_vpetl.checkpointing import TrainCheckpointError
    from video_swin_vpetl.config import ConfigError, load_config
    from video_swin_vpetl.data.lists import ListFileError
    from video_swin_vpetl.models.checkpoint import CheckpointLoadError
    from video_swin_vpetl.train import run_evaluation, run_training

    def action() -> None:
        if args.command == "train":
            run_training(load_config(args.config, args.overrides))
        else:
            run_evaluation(args.checkpoint, args.overrides, args.output, args.split)

    return report_errors(action, (ConfigError, ListFileError, CheckpointLoadError, TrainCheckpointError,
                                  NonFiniteLossError))


if __name__ == "__main__":
    sys.exit(main())
