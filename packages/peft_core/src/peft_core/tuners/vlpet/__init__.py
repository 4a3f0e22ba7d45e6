"""VL-PET: granularity-controlled gates, multi-head down adapter and decoder value parallel adapter."""
from peft_core.tuners.vlpet.config import VlpetConfig
from peft_core.tuners.vlpet.layer import (
    LargeGate,
    MiddleXGate,
    MiddleYGate,
    MultiheadDownAdapter,
    SmallGate,
    ValueParallelAdapterLayer,
    VlpetSublayerLayer,
)
from peft_core.tuners.vlpet.model import VL_MODULES_TO_SAVE, VlpetTuner
from peft_core.tuners.vlpet.sublayer import (
    EncoderDecoderLayout,
    Sublayer,
    SublayerLayer,
    encoder_decoder_layout,
    valid_positions,
)

__all__ = [
    "VL_MODULES_TO_SAVE",
    "EncoderDecoderLayout",
    "LargeGate",
    "MiddleXGate",
    "MiddleYGate",
    "MultiheadDownAdapter",
    "SmallGate",
    "Sublayer",
    "SublayerLayer",
    "ValueParallelAdapterLayer",
    "VlpetConfig",
    "VlpetSublayerLayer",
    "VlpetTuner",
    "encoder_decoder_layout",
    "valid_positions",
]
