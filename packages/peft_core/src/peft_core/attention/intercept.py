"""Intercepting an attention so that :class:`KVExtension` layers can prepend keys and values.

**Extension point.** A method layer (a :class:`~peft_core.layer.MethodLayer`) that also subclasses
:class:`KVExtension` and implements :meth:`KVExtension.extra_kv` contributes ``P`` extra key/value positions to the
attention it is attached to. In its ``attach`` it calls :func:`enable_interception` (reference counted per host), in
its ``detach`` :func:`disable_interception`. At every forward of the host, the extra keys/values of all active
extensions of that host (``host.petl``, insertion order) are concatenated in front of the real ones::

    K' = [K_extra ; K]      V' = [V_extra ; V]      mask' = [valid ; mask]      position_bias' = [0 ; position_bias]

so that ``softmax(q K'^T * scale + mask') V'`` is computed by the host's own attention implementation.

How the host is reached:

* **transformers**: every supported attention calls ``ALL_ATTENTION_FUNCTIONS.get_interface(
  config._attn_implementation, eager_attention_forward)``. peft_core registers a wrapping function under
  ``"petl_kv:<original>"`` in ``transformers.AttentionInterface`` (and the original mask builder under the same key
  in ``AttentionMaskInterface``, so masks are built exactly as before), and switches the host's
  ``config._attn_implementation`` to it while at least one host sharing that config is intercepted. The wrapper calls
  the original implementation (the host's module-file ``eager_attention_forward``, or ``sdpa``) -- unchanged when the
  host has no active extension, so such a model computes exactly what it computed before. The original value is
  restored when the last host of that config is released. (Calling ``model.set_attn_implementation`` while
  intercepted replaces the wrapper and disables the extensions.)
* **nn.MultiheadAttention**: the instance gets a ``forward`` attribute (removed on release) that computes the
  attention from the module's own parameters (:mod:`peft_core.attention.torch_mha`) when an extension is active and
  calls the stock ``nn.MultiheadAttention.forward`` otherwise. A no-op forward pre-hook is registered too: it disables
  ``nn.TransformerEncoderLayer``'s fused inference fast path, which would bypass the module's ``forward``.

Masks: a missing mask on a causal module (``is_causal`` keyword or attribute) with more than one query is replaced by
an explicit causal mask in which every query sees the extra positions; the extra positions are never masked.
"""

from __future__ import annotations

import types
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from peft_core.attention.masks import causal_prefix_mask, pad_attention_mask
from peft_core.attention.sites import AttentionSite, describe_attention, module_eager_function
from peft_core.layer import PETL_ATTR

KEY_PREFIX = "petl_kv:"
"""Prefix of the attention-implementation keys peft_core registers in transformers."""


class KVExtension:
    """Mixin for a :class:`~peft_core.layer.MethodLayer` that prepends key/value positions to its attention host.

    Subclasses implement :meth:`extra_kv`; the layer's ``active`` / ``merged`` flags decide whether it contributes.
    """

    def extra_kv(self, site: AttentionSite, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Extra keys ``(B, P, site.key_dim)`` and values ``(B, P, site.value_dim)`` with heads concatenated in the
        order of the host's key/value projection outputs."""
        raise NotImplementedError


def active_extensions(module: nn.Module) -> list[KVExtension]:
    """The active, unmerged :class:`KVExtension` layers of ``module`` in insertion order."""
    host_dict = module._modules.get(PETL_ATTR)
    if host_dict is None:
        return []
    return [layer for layer in host_dict.values()
            if isinstance(layer, KVExtension) and layer.active and not layer.merged]


def gather_extra_kv(module: nn.Module, site: AttentionSite, batch_size: int
                    ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """All active extensions' keys and values concatenated along the position axis, or ``None``."""
    pairs = [ext.extra_kv(site, batch_size) for ext in active_extensions(module)]
    if not pairs:
        return None
    if len(pairs) == 1:
        return pairs[0]
    return torch.cat([k for k, _ in pairs], dim=1), torch.cat([v for _, v in pairs], dim=1)


# --------------------------------------------------------------------------------------------------- bookkeeping
# The interception state lives in the host's ``__dict__`` (and is shared per config through ``_ConfigState``), so
# ``copy.deepcopy`` / pickling of an intercepted model gives an intercepted copy that can be released on its own.
STATE_ATTR = "_petl_kv_state"


@dataclass(eq=False)
class _ConfigState:
    """A transformers config switched to ``KEY_PREFIX + original`` by ``count`` intercepted hosts."""

    config: Any
    original: str
    count: int

    def __setstate__(self, state: dict) -> None:  # deepcopy / unpickle: register the copy under its own config
        self.__dict__.update(state)
        _CONFIGS[id(self.config)] = self


@dataclass(eq=False)
class _HostState:
    site: AttentionSite
    count: int
    config_state: _ConfigState | None = None


_CONFIGS: weakref.WeakValueDictionary[int, _ConfigState] = weakref.WeakValueDictionary()


def _host_state(module: nn.Module) -> _HostState | None:
    return module.__dict__.get(STATE_ATTR)


def _config_state(config: Any) -> _ConfigState | None:
    state = _CONFIGS.get(id(config))
    return state if state is not None and state.config is config else None


def original_implementation(config: Any) -> str | None:
    """``config._attn_implementation`` as it was before peft_core switched it (its current value otherwise)."""
    state = _config_state(config)
    if state is not None:
        return state.original
    value = config._attn_implementation
    if isinstance(value, str) and value.startswith(KEY_PREFIX):
        return value[len(KEY_PREFIX) :]
    return value


def is_intercepted(module: nn.Module) -> bool:
    return _host_state(module) is not None


def site_of(module: nn.Module) -> AttentionSite:
    """The :class:`AttentionSite` of an intercepted module."""
    state = _host_state(module)
    if state is None:
        raise ValueError(f"{type(module).__name__} is not intercepted; call enable_interception first")
    return state.site


def enable_interception(module: nn.Module) -> AttentionSite:
    """Route ``module``'s attention through peft_core (reference counted). Raises ``TargetError`` if unsupported."""
    state = _host_state(module)
    if state is not None:
        state.count += 1
        return state.site
    site = describe_attention(module)
    state = _HostState(site, 1)
    if site.kind == "torch_mha":
        from peft_core.attention.torch_mha import intercepted_forward

        module.forward = types.MethodType(intercepted_forward, module)
        module.register_forward_pre_hook(_fastpath_breaker)
    else:
        state.config_state = _acquire_config(module.config)
    module.__dict__[STATE_ATTR] = state
    return site


def disable_interception(module: nn.Module) -> None:
    """Undo one :func:`enable_interception`; the last release restores the module (and its config) exactly."""
    state = _host_state(module)
    if state is None:
        return
    state.count -= 1
    if state.count > 0:
        return
    del module.__dict__[STATE_ATTR]
    if state.site.kind == "torch_mha":
        module.__dict__.pop("forward", None)
        for key in [k for k, hook in module._forward_pre_hooks.items() if hook is _fastpath_breaker]:
            del module._forward_pre_hooks[key]
    else:
        _release_config(state.config_state)


def _fastpath_breaker(module: nn.Module, args: tuple) -> None:
    """No-op pre-hook: its presence makes ``nn.TransformerEncoderLayer`` skip its fused fast path."""
    return None


def _set_implementation(config: Any, value: str) -> None:
    # write this config only (the public setter would also rewrite sub-configs)
    if "_attn_implementation_internal" in vars(config):
        config._attn_implementation_internal = value
    else:
        config._attn_implementation = value


def _acquire_config(config: Any) -> _ConfigState:
    state = _config_state(config)
    if state is not None:
        state.count += 1
        return state
    original = original_implementation(config)
    key = _register(original)
    state = _ConfigState(config, original, 1)
    _CONFIGS[id(config)] = state
    _set_implementation(config, key)
    return state


def _release_config(state: _ConfigState) -> None:
    state.count -= 1
    if state.count == 0:
        if _CONFIGS.get(id(state.config)) is state:
            del _CONFIGS[id(state.config)]
        _set_implementation(state.config, state.original)


def _register(original: str) -> str:
    from transformers.masking_utils import AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    key = KEY_PREFIX + original
    if key not in AttentionInterface._global_mapping:
        AttentionInterface.register(key, _make_wrapper(original))
        AttentionMaskInterface.register(key, AttentionMaskInterface._global_mapping[original])
    return key


def _base_function(module: nn.Module, original: str) -> Callable:
    if original == "eager":
        fn = module_eager_function(module)
        if fn is None:
            raise RuntimeError(f"{type(module).__module__} has no eager_attention_forward")
        return fn
    from transformers.modeling_utils import AttentionInterface

    return AttentionInterface._global_mapping[original]


def _make_wrapper(original: str) -> Callable:
    float_masks = original == "eager"

    def petl_kv_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, **kwargs: Any) -> Any:
        base = _base_function(module, original)
        state = _host_state(module)
        extra = gather_extra_kv(module, state.site, key.shape[0]) if state is not None else None
        if extra is None:
            return base(module, query, key, value, attention_mask, **kwargs)
        key, value, attention_mask, kwargs = extend_attention_inputs(
            module, query, key, value, attention_mask, kwargs, extra, float_masks=float_masks
        )
        return base(module, query, key, value, attention_mask, **kwargs)

    petl_kv_attention.__name__ = f"petl_kv_attention_{original}"
    return petl_kv_attention


def split_heads(flat: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """``(B, P, heads * head_dim)`` -> ``(B, heads, P, head_dim)``."""
    batch, length, width = flat.shape
    if width != heads * head_dim:
        raise ValueError(
            f"extra key/value width {width} does not match the attention's {heads} heads x {head_dim} dims"
        )
    return flat.view(batch, length, heads, head_dim).transpose(1, 2)


def extend_attention_inputs(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, kwargs: dict,
                            extra: tuple[torch.Tensor, torch.Tensor], *, float_masks: bool
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, dict]:
    """Prepend ``extra`` (flat ``(B, P, width)`` keys and values) to ``key``/``value`` ``(B, heads, S, head_dim)``
    and extend the mask and the ``position_bias`` keyword accordingly (see the module docstring)."""
    extra_k, extra_v = extra
    num_prefix, kv_length = extra_k.shape[1], key.shape[2]
    extra_k = split_heads(extra_k.to(key.dtype), key.shape[1], key.shape[3])
    extra_v = split_heads(extra_v.to(value.dtype), value.shape[1], value.shape[3])
    key = torch.cat([extra_k, key], dim=2)
    value = torch.cat([extra_v, value], dim=2)
    kwargs = dict(kwargs)
    if attention_mask is None:
        causal = kwargs.get("is_causal")
        if causal is None:
            causal = getattr(module, "is_causal", False)
        q_length = query.shape[2]
        if causal and q_length > 1:
            attention_mask = causal_prefix_mask(q_length, kv_length, num_prefix, device=query.device,
                                                dtype=query.dtype if float_masks else None)
            kwargs["is_causal"] = False
    else:
        attention_mask = pad_attention_mask(attention_mask, num_prefix, kv_length)
    bias = kwargs.get("position_bias")
    if isinstance(bias, torch.Tensor) and bias.shape[-1] == kv_length:
        zeros = torch.zeros((*bias.shape[:-1], num_prefix), dtype=bias.dtype, device=bias.device)
        kwargs["position_bias"] = torch.cat([zeros, bias], dim=-1)
    return key, value, attention_mask, kwargs
