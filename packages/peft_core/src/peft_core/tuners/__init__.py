"""Built-in methods. Importing this package registers every method and preset."""

from peft_core.tuners import bitfit, bottleneck, compacter, lora, lst, patt, unipt, vlpet, window_prefix  # noqa: F401
