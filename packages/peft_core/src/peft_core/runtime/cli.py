"""The command-line pieces every task package shares (``video-swin-vpetl``, ``vse-infty``, ``vl-pet``, ...).

    train   --config FILE [section.key=value ...]     a run from a config (resumes automatically)
    compare RESULT.json ...                           forwarded to :func:`peft_core.compare.compare_main`
    demo    [--out DIR] [--quick] [--seed N]          the package's few-minute CPU demo

:func:`report_errors` turns the package's user-facing errors (bad config, data file, checkpoint, NaN loss) into
one ``error: ...`` line (further lines indented, e.g. a key-mapping report) and exit status 2, instead of a
traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

OVERRIDES_METAVAR = "section.key=value"


def add_train_command(sub: argparse._SubParsersAction, config_help: str,
                      help: str = "train (config file + section.key=value overrides); resumes automatically",
                      ) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help=help)
    p.add_argument("--config", help=config_help)
    p.add_argument("overrides", nargs="*", metavar=OVERRIDES_METAVAR)
    return p


def add_compare_command(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("compare", help="compare result JSON files with shared/baselines (peft_core.compare)",
                       add_help=False)
    p.add_argument("args", nargs=argparse.REMAINDER)
    return p


def add_demo_command(sub: argparse._SubParsersAction, help: str, out: str) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help=help)
    p.add_argument("--out", default=out)
    p.add_argument("--quick", action="store_true", help="smaller data and fewer steps (tests, smoke runs)")
    p.add_argument("--seed", type=int, default=0)
    return p


def forward_compare(argv: list[str]) -> int | None:
    """``<tool> compare ...`` goes to peft_core's comparer with its own options; None for any other command."""
    if argv and argv[0] == "compare":
        from peft_core.compare import compare_main

        return compare_main(argv[1:])
    return None


def report_errors(action: Callable[[], int | None], errors: tuple[type[BaseException], ...]) -> int:
    """Run ``action``; an exception of ``errors`` prints ``error: <first line>`` (other lines indented) and gives
    exit status 2. Anything else propagates with its traceback (a bug, not a user error)."""
    try:
        status = action()
    except errors as exc:
        first, *details = str(exc).strip().splitlines() or [type(exc).__name__]
        print(f"error: {first}", file=sys.stderr)
        for line in details:
            print(f"  {line}", file=sys.stderr)
        return 2
    return 0 if status is None else status
