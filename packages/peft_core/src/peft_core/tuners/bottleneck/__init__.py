"""Bottleneck adapters."""
from peft_core.tuners.bottleneck.config import BottleneckConfig
from peft_core.tuners.bottleneck.layer import BottleneckAdapter, BottleneckLayer, init_bottleneck
from peft_core.tuners.bottleneck.model import BottleneckTuner

__all__ = ["BottleneckAdapter", "BottleneckConfig", "BottleneckLayer", "BottleneckTuner", "init_bottleneck"]
