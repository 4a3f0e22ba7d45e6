"""``python -m peft_core.bench`` (see :mod:`peft_core.bench.cli`)."""

from peft_core.bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
