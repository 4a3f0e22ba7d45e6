"""Names of upstream VL-PET / VL-Adapter state-dict entries for every tensor of a VL model built here.

Upstream models (HenryHZY/VL-PET@7430cad ``src/modeling_bart.py:VLBart`` / ``src/modeling_t5.py:VLT5`` over the copied
``src/my_transformers/modeling_{bart,t5}.py``; ylsung/VL_adapter@545fcbb the same lineage) save ``state_dict()``:

* VL-BART: ``model.{shared,encoder,decoder}.*``, ``lm_head.weight``, ``final_logits_bias``; the visual embedding is
  ``model.encoder.visual_embedding.*``. Here: ``model.model.*``, ``model.lm_head.weight``, ``model.final_logits_bias``,
  ``visual_embedding.*``.
* VL-T5: ``{shared,encoder,decoder}.*``, ``lm_head.weight``, ``encoder.visual_embedding.*``. Here: ``model.*`` and
  ``visual_embedding.*``.

Method tensors (``<host>.petl.<adapter>.<name>`` here) map to the modules upstream adds (``{task}`` is any task of
the ``AdapterController`` / ``ParameterDict``: with ``--use_single_adapter`` / ``--use_single_lora`` /
``--use_single_prompt`` every task holds the same tensor, and ``state_dict`` stores one copy per task)::

    VL-PET sublayer (BART encoder layer i, T5 encoder block i layer 0 / 1), P = attn | ff:
      adapter.down.{h}.*  -> {P}_adapter_multihead_down.{h}.*        adapter.up.*  -> {P}_adapter_multihead_up.*
      gate (large)        -> encoder_{P}_adapter_gating_large_x_{down,up}.*
      gate (small)        -> encoder_{P}_adapter_gating_small_xy_cat.*
      gate (middleX)      -> encoder_{P}_adapter_gating_middle_xy_add.*
      gate (middleY) z    -> encoder_{P}_adapter_gating_middle_ia3_add
      adapter (bottleneck / compacter, Table 9)  -> {P}_adapter.adapters.{task}.{down,up}_sampler.*   (assumed:
                                                   Table 9 has no released script)
    VPA (BART encoder_attn.v_proj, T5 EncDecAttention.v) -> <attention>.attn_value_parallel_adapter.adapters.{task}.
                                                            {down,up}_sampler.*
    VL-Adapter / Compacter adapter after  BART enc self_attn -> attn_adapter,  fc2 -> ff_adapter;
                                           BART dec self_attn -> self_attn_adapter, encoder_attn -> enc_attn_adapter,
                                           fc2 -> ff_adapter;  T5 layer.0 -> attn_adapter, dec layer.1 ->
                                           enc_attn_adapter, FFN -> ff_adapter;  .adapters.{task}.{down,up}_sampler.*
                                           (PHM: phm_rule, W, b as upstream PHMLinear)
    LoRA  q/v: lora.lora_A -> <proj>.lora_As.{task},  lora.lora_B -> <proj>.lora_Bs.{task}
    prompt (encoder): mlp.embedding / proj_in / proj_out -> encoder.prompt_modules.<...>.prefix_embedding.{0,1,3}.*
                      (InputPrompts; the container between ``prompt_modules`` and ``prefix_embedding`` is matched by
                      a wildcard, exported as ``prompts.{task}``)
    bias / norm deltas (BitFit, LoRA's biases, VL-PET encoder norms): upstream trains the host tensor in place, so a
                      delta maps to the host's own key (loaded into the host, delta set to 0); a bias added where the
                      host has none (LST's T5 ``--use_bitfit``: ``q.bias``, ``lm_head.bias``) is loaded as it is.

LST side networks (ylsung/Ladder-Side-Tuning) are not mapped: their tensors are reported as missing method tensors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from peft_core.layer import PETL_ATTR
from peft_core.tuners.bitfit.layer import BiasDeltaLayer, NormDeltaLayer
from peft_core.tuners.bottleneck.layer import BottleneckLayer
from peft_core.tuners.compacter.layer import CompacterLayer
from peft_core.tuners.lora.layer import LoraLinearLayer
from peft_core.tuners.prompt.layer import PromptLayer
from peft_core.tuners.vlpet.layer import (
    LargeGate,
    MiddleXGate,
    MiddleYGate,
    MultiheadDownAdapter,
    SmallGate,
    ValueParallelAdapterLayer,
    VlpetSublayerLayer,
)
from torch import nn

TASKS = ("vqa", "gqa", "nlvr", "caption")
"""Upstream ``--tasks "vqa,gqa,nlvr,caption"``: the keys of every AdapterController / LoRA / prompt ModuleDict."""

TASK = "{task}"
PROMPT_CONTAINER = "prompts.{task}"


@dataclass(frozen=True)
class UpstreamName:
    """Where one of our tensors lives upstream.

    ``template``: the upstream key, possibly with ``{task}`` (any task name) or, for prompts, a wildcard container.
    ``delta``: our tensor is a zero-initialised delta on a host tensor whose upstream key is ``template``.
    """

    template: str
    delta: bool = False

    @property
    def templated(self) -> bool:
        return TASK in self.template

    def pattern(self) -> re.Pattern[str]:
        """A regular expression matching every upstream key this tensor may be stored under."""
        parts = self.template.split(PROMPT_CONTAINER) if PROMPT_CONTAINER in self.template else [self.template]
        if len(parts) == 2:
            return re.compile(re.escape(parts[0]) + r"(?:[^.]+\.)*?[^.]+" + re.escape(parts[1]))
        return re.compile(re.escape(self.template).replace(re.escape(TASK), r"[^.]+"))

    def keys(self, tasks: tuple[str, ...] = TASKS) -> list[str]:
        """Concrete keys to export (one per task for templated names)."""
        if not self.templated:
            return [self.template]
        return [self.template.replace(TASK, t) for t in tasks]


def base_key(name: str, family: str) -> str:
    """Our name of a language-model / visual-embedding tensor or module -> upstream's."""
    if name == "visual_embedding" or name.startswith("visual_embedding."):
        return ("model.encoder." if family == "bart" else "encoder.") + name
    if not name.startswith("model."):
        raise ValueError(f"{name!r} is not a tensor of a VL model; expected a name under 'model.' or "
                         "'visual_embedding.'")
    # BART: model.model.encoder.* -> model.encoder.*, model.lm_head.* -> lm_head.*; T5: model.encoder.* -> encoder.*
    return name[len("model."):]


def _index(host: str, word: str) -> int:
    m = re.search(rf"\.{word}\.(\d+)\.", f".{host}.")
    if m is None:
        raise ValueError(f"cannot read the layer index from {host!r}; expected '...{word}.N...'")
    return int(m.group(1))


def _adapter_owner(host: str, family: str) -> str:
    """The upstream AdapterController attribute for a serial adapter placed after module ``host``."""
    decoder = ".decoder." in f".{host}."
    if family == "bart":
        side = "decoder" if decoder else "encoder"
        layer = f"model.{side}.layers.{_index(host, 'layers')}"
        if host.endswith("self_attn.out_proj"):
            return f"{layer}.{'self_attn_adapter' if decoder else 'attn_adapter'}"
        if host.endswith("encoder_attn.out_proj"):
            return f"{layer}.enc_attn_adapter"
        if host.endswith("fc2"):
            return f"{layer}.ff_adapter"
    else:
        m = re.search(r"(encoder|decoder)\.block\.(\d+)\.layer\.(\d+)\.", host + ".")
        if m is not None:
            sub = f"{m.group(1)}.block.{m.group(2)}.layer.{m.group(3)}"
            if host.endswith("SelfAttention.o"):
                return f"{sub}.attn_adapter"
            if host.endswith("EncDecAttention.o"):
                return f"{sub}.enc_attn_adapter"
            if host.endswith("DenseReluDense.wo"):
                return f"{sub}.ff_adapter"
    raise ValueError(f"no upstream adapter sits after {host!r}; expected an attention output or FFN output")


def _controller(owner: str, rest: str) -> str:
    """``down.X`` / ``up.X`` (optionally under ``adapter.``) -> ``owner.adapters.{task}.{down,up}_sampler.X``."""
    rest = rest.removeprefix("adapter.")
    which, _, tail = rest.partition(".")
    if which not in ("down", "up"):
        raise ValueError(f"unexpected adapter tensor {rest!r} under {owner!r}; expected down.* or up.*")
    return f"{owner}.adapters.{TASK}.{which}_sampler.{tail}"


def _vlpet_sublayer(layer: VlpetSublayerLayer, host: str, rest: str, family: str) -> str:
    p = "attn" if layer.kind == "attn" else "ff"
    if family == "bart":
        owner = f"model.encoder.layers.{_index(host, 'layers')}"
    else:
        m = re.search(r"encoder\.block\.(\d+)\.layer\.(\d+)\.", host + ".")
        if m is None:
            raise ValueError(f"cannot read the T5 encoder block of {host!r}")
        owner = f"encoder.block.{m.group(1)}.layer.{m.group(2)}"
    if rest.startswith("adapter."):
        if isinstance(layer.adapter, MultiheadDownAdapter):
            tail = rest[len("adapter."):]
            which, _, t = tail.partition(".")
            return f"{owner}.{p}_adapter_multihead_{which}.{t}"
        return _controller(f"{owner}.{p}_adapter", rest)
    gate = layer.gate
    tail = rest[len("gate."):]
    if isinstance(gate, LargeGate):
        which, _, t = tail.partition(".")
        return f"{owner}.encoder_{p}_adapter_gating_large_x_{which}.{t}"
    if isinstance(gate, SmallGate):
        return f"{owner}.encoder_{p}_adapter_gating_small_xy_cat.{tail.removeprefix('linear.')}"
    if isinstance(gate, MiddleXGate):
        return f"{owner}.encoder_{p}_adapter_gating_middle_xy_add.{tail.removeprefix('linear.')}"
    if isinstance(gate, MiddleYGate):
        return f"{owner}.encoder_{p}_adapter_gating_middle_ia3_add"
    raise ValueError(f"unexpected VL-PET tensor {rest!r} at {host!r}")


def method_key(layer: nn.Module, host_module: nn.Module, host: str, rest: str, family: str) -> UpstreamName | None:
    """The upstream name of tensor ``rest`` of a peft_core layer at module ``host`` (``None``: no upstream
    counterpart)."""
    if isinstance(layer, BiasDeltaLayer):
        # a bias the host has is a delta on it; a bias the host lacks (LST's T5 --use_bitfit) is a tensor of its own
        owned = isinstance(getattr(host_module, "bias", None), torch.Tensor)
        return UpstreamName(base_key(f"{host}.bias", family), delta=owned)
    if isinstance(layer, NormDeltaLayer):
        return UpstreamName(base_key(f"{host}.{'weight' if rest == 'gain' else 'bias'}", family), delta=True)
    if isinstance(layer, VlpetSublayerLayer):
        return UpstreamName(_vlpet_sublayer(layer, host, rest, family))
    if isinstance(layer, ValueParallelAdapterLayer):
        return UpstreamName(_controller(base_key(host, family).rsplit(".", 1)[0] + ".attn_value_parallel_adapter",
                                        rest))
    if isinstance(layer, BottleneckLayer | CompacterLayer):
        return UpstreamName(_controller(_adapter_owner(host, family), rest))
    if isinstance(layer, LoraLinearLayer):
        which = {"lora.lora_A": "lora_As", "lora.lora_B": "lora_Bs"}.get(rest)
        return None if which is None else UpstreamName(f"{base_key(host, family)}.{which}.{TASK}")
    if isinstance(layer, PromptLayer):
        index = {"mlp.embedding": 0, "mlp.proj_in": 1, "mlp.proj_out": 3}
        module, _, kind = rest.rpartition(".")
        if module not in index:
            return None
        return UpstreamName(f"{base_key(host, family)}.prompt_modules.{PROMPT_CONTAINER}.prefix_embedding."
                            f"{index[module]}.{kind}")
    return None


def split_method_name(name: str) -> tuple[str, str, str] | None:
    """``<host>.petl.<adapter>.<rest>`` -> ``(host, adapter, rest)``; ``None`` for a model tensor."""
    marker = f".{PETL_ATTR}."
    if marker not in f".{name}":
        return None
    host, _, tail = f".{name}".partition(marker)
    adapter, _, rest = tail.partition(".")
    return host.lstrip("."), adapter, rest


def upstream_names(model: nn.Module, family: str) -> dict[str, UpstreamName | None]:
    """For every entry of ``model.state_dict()``: its upstream name (``None`` when upstream has none)."""
    out: dict[str, UpstreamName | None] = {}
    for name in model.state_dict():
        parts = split_method_name(name)
        if parts is None:
            out[name] = UpstreamName(base_key(name, family))
            continue
        host, adapter, rest = parts
        module = model.get_submodule(host)
        out[name] = method_key(module._modules[PETL_ATTR][adapter], module, host, rest, family)
    return out
