"""peft_core: one implementation of parameter-efficient transfer learning methods.

Functional API (the model is never subclassed or copied)::

    from peft_core import add_adapter, make_config, mark_trainable, save_adapter
    add_adapter(model, make_config("lora", r=8))
    mark_trainable(model)
"""

from peft_core.checkpoint import (
    CheckpointError,
    adapter_state_dict,
    load_adapter,
    load_adapter_state_dict,
    save_adapter,
)
from peft_core.config import PetlConfig, load_config
from peft_core.model import (
    active_adapters,
    adapter_parameters,
    adapter_records,
    add_adapter,
    delete_adapter,
    disable_adapters,
    iter_layers,
    mark_trainable,
    merge_adapter,
    merge_and_unload,
    remove_adapters,
    set_active_adapters,
    unmerge_adapter,
)
from peft_core.registry import get_method, get_preset, list_methods, list_presets, make_config
from peft_core.report import ParamReport, count_parameters
from peft_core.targeting import TargetError

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ParamReport",
    "PetlConfig",
    "TargetError",
    "active_adapters",
    "adapter_parameters",
    "adapter_records",
    "adapter_state_dict",
    "add_adapter",
    "count_parameters",
    "delete_adapter",
    "disable_adapters",
    "get_method",
    "get_preset",
    "iter_layers",
    "list_methods",
    "list_presets",
    "load_adapter",
    "load_adapter_state_dict",
    "load_config",
    "make_config",
    "mark_trainable",
    "merge_adapter",
    "merge_and_unload",
    "remove_adapters",
    "save_adapter",
    "set_active_adapters",
    "unmerge_adapter",
]
