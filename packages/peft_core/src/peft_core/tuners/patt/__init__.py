"""V-PETL parallel attention adapter (PATT)."""
from peft_core.tuners.patt.config import PattConfig
from peft_core.tuners.patt.layer import PattAdapter, PattLayer, host_layout, is_attention_host
from peft_core.tuners.patt.model import PattTuner

__all__ = ["PattAdapter", "PattConfig", "PattLayer", "PattTuner", "host_layout", "is_attention_host"]
