"""Entry point of ``python -m peft_core``."""

from peft_core.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
