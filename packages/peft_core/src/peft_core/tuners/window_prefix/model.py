"""Window prefix tuner: Swin-like window attentions (duck-typed), default targets."""

from __future__ import annotations

import re

from torch import nn

from peft_core.registry import register_method
from peft_core.targeting import TargetError, find_targets
from peft_core.tuner import Tuner
from peft_core.tuners.window_prefix.config import WindowPrefixConfig
from peft_core.tuners.window_prefix.layer import WindowPrefixLayer, window_attention_error


class WindowPrefixTuner(Tuner):
    """One :class:`WindowPrefixLayer` per window attention.

    Default targets (no ``target_modules`` / ``target_types``): every module duck-typed as a window attention
    (``qkv`` and ``proj`` Linears, ``num_heads``, ``scale``, a relative position bias): timm Swin
    ``WindowAttention``, Video Swin ``WindowAttention3D``.
    """

    config_cls = WindowPrefixConfig

    def resolve(self, model: nn.Module, config: WindowPrefixConfig) -> list[tuple[str, nn.Module]]:
        if config.target_modules is not None or config.target_types:
            return super().resolve(model, config)
        names = [n for n, m in model.named_modules() if n and window_attention_error(m) is None]
        if not names:
            raise TargetError(
                "window_prefix: found no window attention (a module with `qkv` and `proj` Linears, `num_heads`, "
                "`scale` and a relative position bias); give target_modules"
            )
        pattern = "|".join(re.escape(n) for n in names)
        return find_targets(model, pattern, exclude_modules=config.exclude_modules, what=config.method)

    def check_host(self, name: str, module: nn.Module, config: WindowPrefixConfig) -> None:
        error = window_attention_error(module)
        if error is not None:
            raise TargetError(error)

    def create_layer(self, name: str, module: nn.Module, config: WindowPrefixConfig) -> WindowPrefixLayer:
        return WindowPrefixLayer(module, config)


register_method(WindowPrefixTuner())
