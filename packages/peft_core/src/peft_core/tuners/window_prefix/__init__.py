"""Prefix tuning on windowed (Swin / Video Swin) attention."""
from peft_core.tuners.window_prefix.config import WindowPrefixConfig
from peft_core.tuners.window_prefix.layer import (
    WindowPrefixForward,
    WindowPrefixLayer,
    relative_position_bias,
    window_attention_error,
    window_attention_with_prefix,
    window_prefix_forward,
)
from peft_core.tuners.window_prefix.model import WindowPrefixTuner

__all__ = [
    "WindowPrefixConfig",
    "WindowPrefixForward",
    "WindowPrefixLayer",
    "WindowPrefixTuner",
    "relative_position_bias",
    "window_attention_error",
    "window_attention_with_prefix",
    "window_prefix_forward",
]
