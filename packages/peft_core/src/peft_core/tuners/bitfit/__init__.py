"""BitFit and LayerNorm tuning."""
from peft_core.tuners.bitfit.config import BitFitConfig, LayerNormTuningConfig
from peft_core.tuners.bitfit.layer import BiasDeltaLayer, NormDeltaLayer
from peft_core.tuners.bitfit.model import BitFitTuner, LayerNormTuner

__all__ = [
    "BiasDeltaLayer", "BitFitConfig", "BitFitTuner", "LayerNormTuner", "LayerNormTuningConfig", "NormDeltaLayer",
]
