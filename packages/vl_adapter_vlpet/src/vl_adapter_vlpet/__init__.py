"""VL-BART / VL-T5 with VL-PET and the VL-Adapter baselines, methods from peft_core."""
