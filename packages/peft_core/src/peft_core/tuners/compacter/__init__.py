"""Compacter: bottleneck adapters whose projections are sums of Kronecker products (PHM layers)."""
from peft_core.tuners.compacter.config import CompacterConfig
from peft_core.tuners.compacter.layer import CompacterLayer, CompacterRuleLayer, PHMLinear, phm_weight
from peft_core.tuners.compacter.model import CompacterTuner

__all__ = ["CompacterConfig", "CompacterLayer", "CompacterRuleLayer", "CompacterTuner", "PHMLinear", "phm_weight"]
