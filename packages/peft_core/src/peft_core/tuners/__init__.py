"""Built-in methods. Importing this package registers every method and preset."""

from peft_core.tuners import bitfit, bottleneck, lora, patt, unipt, vlpet, window_prefix  # noqa: F401
