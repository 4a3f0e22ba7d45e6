"""LoRA."""
from peft_core.tuners.lora.config import LoraConfig
from peft_core.tuners.lora.layer import LoraConv2dLayer, LoraLinearDelta, LoraLinearLayer, LoraMultiheadAttentionLayer
from peft_core.tuners.lora.model import LoraTuner

__all__ = ["LoraConfig", "LoraConv2dLayer", "LoraLinearDelta", "LoraLinearLayer", "LoraMultiheadAttentionLayer",
           "LoraTuner"]
