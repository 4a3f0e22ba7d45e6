"""Ladder Side Tuning: a small side network fed by ladders from a frozen transformer that runs without autograd."""
from peft_core.tuners.lst.config import LSTConfig
from peft_core.tuners.lst.families import FAMILIES, StackFamily, StackRef, find_stacks
from peft_core.tuners.lst.layer import LSTLayer, LSTSideStack, LSTStateError
from peft_core.tuners.lst.model import LSTTuner, apply_fisher_init, lst_fisher_importance, lst_layer
from peft_core.tuners.lst.pruning import select_indices, slice_param, top_units, unit_scores

__all__ = [
    "FAMILIES",
    "LSTConfig",
    "LSTLayer",
    "LSTSideStack",
    "LSTStateError",
    "LSTTuner",
    "StackFamily",
    "StackRef",
    "apply_fisher_init",
    "find_stacks",
    "lst_fisher_importance",
    "lst_layer",
    "select_indices",
    "slice_param",
    "top_units",
    "unit_scores",
]
