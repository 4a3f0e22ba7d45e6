"""Built-in methods. Importing this package registers every method and preset."""

from peft_core.tuners import (  # noqa: F401
    bitfit,
    bottleneck,
    compacter,
    lora,
    lst,
    moe,
    patt,
    pituning,
    prefix,
    prompt,
    unipt,
    vlpet,
    window_prefix,
)
