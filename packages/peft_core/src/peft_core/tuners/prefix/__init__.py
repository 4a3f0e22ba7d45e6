"""Prefix tuning (key/value prefixes per attention; OFA prefix, Uni-Perceiver deep prompts)."""
from peft_core.tuners.prefix.config import PrefixConfig
from peft_core.tuners.prefix.layer import PrefixLayer, PrefixMLP
from peft_core.tuners.prefix.model import PrefixTuner, attention_kind, collapse_prefix_mlp, default_prefix_targets

__all__ = ["PrefixConfig", "PrefixLayer", "PrefixMLP", "PrefixTuner", "attention_kind", "collapse_prefix_mlp",
           "default_prefix_targets"]
