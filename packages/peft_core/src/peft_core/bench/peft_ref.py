"""The Hugging Face PEFT side of the comparison (``peft`` is a bench-only dependency).

``peft:NAME`` measures PEFT's implementation of the method of preset ``NAME`` on the same model, workload and
shapes, in the same run and with the same process machinery:

==========  =====================================================================================================
method      PEFT config
==========  =====================================================================================================
lora        ``LoraConfig(r, lora_alpha=alpha, lora_dropout=dropout, target_modules=<the exact modules the
            peft_core preset targets on this model>)``
prefix      ``PrefixTuningConfig(num_virtual_tokens=L, prefix_projection=<reparameterization == "mlp">,
            encoder_hidden_size=<MLP width>)`` (``space="kv"`` presets only). PEFT places the prefixes itself, as
            ``past_key_values``: for BART / T5 one set per decoder layer, used by its self- and cross-attention
prompt      ``PromptTuningConfig(num_virtual_tokens=L)`` (presets without the MLP reparameterisation); for BART / T5
            PEFT allocates ``2 L`` vectors and prepends the first ``L`` to the encoder input
ia3         ``IA3Config(target_modules=<the same modules>, feedforward_modules=<those of them in the FFN>)``
==========  =====================================================================================================

Prompt learning (prefix, prompt) uses PEFT's task wrappers: ``SEQ_2_SEQ_LM`` for BART / T5, ``FEATURE_EXTRACTION``
for BERT; PEFT has no such wrapper for CLIP or vision models, so those pairs are skipped with that reason.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from torch import nn

from peft_core.bench.configs import ModelSpec

METHODS = ("lora", "prefix", "prompt", "ia3")
"""peft_core methods that Hugging Face PEFT implements the same way."""

TASK_TYPES = {"seq2seq": "SEQ_2_SEQ_LM", "encoder": "FEATURE_EXTRACTION"}
"""PEFT task type of the prompt-learning wrapper per workload."""

FFN_SUFFIXES = ("fc1", "fc2", "wi", "wo", "intermediate.dense", "mlp.fc1", "mlp.fc2", "linear1", "linear2")
"""Module-name endings of feed-forward layers (IA3 scales their input instead of their output)."""


def peft_available() -> bool:
    """Whether ``peft`` is installed (without importing it: that imports transformers)."""
    return importlib.util.find_spec("peft") is not None


def unsupported(name: str, spec: ModelSpec | None = None) -> str | None:
    """Why PEFT cannot run the method of preset ``name`` (on ``spec``'s workload), or ``None`` if it can."""
    from peft_core.registry import make_config

    try:
        config = make_config(name)
    except (ValueError, TypeError) as exc:
        return f"config: {exc}"
    method = config.method
    if method not in METHODS:
        return f"Hugging Face PEFT has no '{method}' method"
    if not peft_available():
        return "peft is not installed (install the bench extra)"
    if method == "lora":
        if getattr(config, "fused_slices", None):
            return "PEFT LoRA has no per-slice (q/k/v) update of a fused projection"
        if getattr(config, "init", "default") != "default":
            return f"PEFT LoRA has no init={config.init!r}"
    if method == "prefix" and getattr(config, "space", "kv") != "kv":
        return "PEFT prefix tuning has no hidden-space (deep prompt) prefixes"
    if method == "prompt" and getattr(config, "reparameterization", "none") != "none":
        return "PEFT prompt tuning has no MLP reparameterisation (that is P-tuning, a different method)"
    if method in ("prefix", "prompt") and spec is not None and spec.workload not in TASK_TYPES:
        return f"PEFT prompt learning has no task wrapper for a {spec.workload} model"
    return None


def _targets(model: nn.Module, config: Any) -> list[str]:
    """The module names the peft_core preset targets on ``model`` (found by a trial injection, then removed)."""
    from peft_core.model import add_adapter, remove_adapters

    record = add_adapter(model, config, name="probe")
    hosts = list(record.hosts)
    remove_adapters(model)
    return hosts


def _virtual_tokens(config: Any) -> int:
    return int(config.num_virtual_tokens)


def make_peft_config(name: str, spec: ModelSpec, model: nn.Module) -> Any:
    """The PEFT config equivalent to preset ``name`` on ``model`` (see the module docstring)."""
    import peft

    from peft_core.registry import make_config

    reason = unsupported(name, spec)
    if reason is not None:
        raise ValueError(f"peft:{name}: {reason}")
    config = make_config(name)
    method = config.method
    if method == "lora":
        return peft.LoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
                               target_modules=_targets(model, config), bias="none")
    if method == "ia3":
        targets = _targets(model, config)
        ffn = [t for t in targets if t.endswith(FFN_SUFFIXES) and "attention" not in t]
        return peft.IA3Config(target_modules=targets, feedforward_modules=ffn)
    task = TASK_TYPES[spec.workload]
    if method == "prefix":
        width = model.config.d_model if hasattr(model.config, "d_model") else model.config.hidden_size
        mlp = config.reparameterization == "mlp"
        return peft.PrefixTuningConfig(task_type=task, num_virtual_tokens=_virtual_tokens(config),
                                       prefix_projection=mlp, encoder_hidden_size=config.mlp_width(width))
    return peft.PromptTuningConfig(task_type=task, num_virtual_tokens=_virtual_tokens(config))


def apply(name: str, spec: ModelSpec, model: nn.Module) -> nn.Module:
    """``peft.get_peft_model(model, <equivalent config>)``: only PEFT's parameters are trainable."""
    import peft

    return peft.get_peft_model(model, make_peft_config(name, spec, model))
