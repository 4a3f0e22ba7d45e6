"""Input prompt tuning layers.

For a text encoder with token embeddings ``E(x)`` (``(B, S, d)``) and padding mask ``m`` (``(B, S)``)::

    inputs_embeds' = [P ; E(x)]        attention_mask' = [1_L ; m]        (B, L + S, d), (B, L + S)

with ``P`` = ``(L, d)`` parameters (Lester et al. 2021), or ``P = W_2 act(W_1 E_p + b_1) + b_2`` with
``E_p = Embedding(L, d)`` weights, ``W_1``: ``d -> 800``, ``act = tanh``, ``W_2``: ``800 -> d`` (VL-Adapter
``prompt/prompt_modeling.py:InputPrompts``, prepended to the text embeddings in ``JointEncoder.forward``; vlpet.md).

:class:`PromptLayer` sits on the module that receives ``input_ids`` (a transformers encoder such as ``BartEncoder`` /
T5's encoder stack, or an encoder-only base model such as ``BertModel``): a forward pre-hook embeds the ids with
the module's own input embeddings, prepends the prompts and extends ``attention_mask`` (and ``token_type_ids`` /
``position_ids`` when given). The encoder's outputs are therefore ``L`` positions longer. For an encoder-decoder
model, :class:`PromptCrossMaskLayer` on the decoder prepends ``L`` ones to ``encoder_attention_mask`` whenever the
encoder states are ``L`` longer than that mask, so cross-attention sees the prompts (also during ``generate``, which
runs the encoder on its own). Decoder inputs are left alone. Prompt tuning is NOT the identity at initialisation.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from peft_core.layer import PETL_ATTR, MethodLayer
from peft_core.tuners.prefix.layer import PrefixMLP
from peft_core.tuners.prompt.config import PromptConfig


def bind_kwargs(signature: inspect.Signature, args: tuple, kwargs: dict) -> dict[str, Any]:
    """All arguments of a call as keywords (``**kwargs`` catch-alls merged in)."""
    bound = signature.bind_partial(*args, **kwargs)
    out: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                raise TypeError(f"cannot rewrite a call with extra positional arguments {len(value)}")
        else:
            out[name] = value
    return out


class PromptLayer(MethodLayer):
    """Trainable input prompts prepended by a forward pre-hook on the module that embeds ``input_ids``::

        inputs_embeds' = [P ; E(x)],   attention_mask' = [1_L ; mask],   P = prompt  or  W_2 act(W_1 E_p + b_1) + b_2

    Lester et al. 2021; VL-Adapter ``prompt/prompt_modeling.py:InputPrompts`` (MLP d -> 800 -> d, tanh).

    With ``positions="none"`` a forward hook on the encoder's absolute position embedding (``position_module``)
    shifts its output by ``L`` with zeros in front, so the prompts get no position embedding and the text keeps
    positions ``0..S-1`` (VL-BART).
    """

    def __init__(self, host: nn.Module, config: PromptConfig, position_module: nn.Module | None = None) -> None:
        super().__init__()
        embed = host.get_input_embeddings()
        dim = embed.weight.shape[1]
        self.num_virtual_tokens = config.num_virtual_tokens
        self.positions = config.positions
        if config.reparameterization == "mlp":
            self.mlp = PrefixMLP(config.num_virtual_tokens, dim, config.mlp_dim, dim, config.activation)
        elif config.init == "vocab":
            ids = torch.randint(0, embed.weight.shape[0], (config.num_virtual_tokens,), device=embed.weight.device)
            with torch.no_grad():
                self.prompt = nn.Parameter(embed(ids).detach().clone().float())
        else:
            self.prompt = nn.Parameter(torch.randn(config.num_virtual_tokens, dim))
        object.__setattr__(self, "_position_module", position_module)
        object.__setattr__(self, "_signature", inspect.signature(host.forward))
        self._pending = 0

    def prompts(self) -> torch.Tensor:
        """The ``(L, d)`` prompt embeddings."""
        return self.mlp() if "mlp" in self._modules else self.prompt

    # ------------------------------------------------------------------------------------------------ hooks
    def attach(self, host: nn.Module) -> None:
        self._handles.append(host.register_forward_pre_hook(self._encoder_pre, with_kwargs=True))
        self._handles.append(host.register_forward_hook(self._encoder_post, always_call=True))
        if self.positions == "none" and self._position_module is not None:
            self._handles.append(self._position_module.register_forward_hook(self._shift_positions))

    def _encoder_pre(self, host: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        self._pending = 0
        if not self.active or self.merged:
            return None
        others = [n for n, layer in host._modules[PETL_ATTR].items()
                  if isinstance(layer, PromptLayer) and layer is not self and layer.active and not layer.merged]
        if others:
            raise RuntimeError(f"only one input-prompt adapter may be active on a module; also active: {others}; "
                               "use set_active_adapters to pick one")
        kw = bind_kwargs(self._signature, args, kwargs)
        embeds = kw.get("inputs_embeds")
        if embeds is None:
            if kw.get("input_ids") is None:
                raise ValueError("prompt tuning needs input_ids or inputs_embeds")
            embeds = host.get_input_embeddings()(kw["input_ids"])
        batch, num = embeds.shape[0], self.num_virtual_tokens
        prompts = self.prompts().to(embeds.dtype)[None].expand(batch, -1, -1)
        kw["inputs_embeds"] = torch.cat([prompts, embeds], dim=1)
        kw["input_ids"] = None
        mask = kw.get("attention_mask")
        if mask is not None:
            if mask.dim() != 2:
                raise ValueError(f"attention_mask with {mask.dim()} dims is not allowed with prompt tuning; "
                                 "expected a (batch, length) padding mask")
            kw["attention_mask"] = torch.cat([mask.new_ones(mask.shape[0], num), mask], dim=1)
        token_types = kw.get("token_type_ids")
        if token_types is not None:
            kw["token_type_ids"] = torch.cat([token_types.new_zeros(token_types.shape[0], num), token_types], dim=1)
        positions = kw.get("position_ids")
        if positions is not None:
            rows = positions.shape[0]
            if self.positions == "shift":
                head = torch.arange(num, device=positions.device, dtype=positions.dtype).expand(rows, -1)
                kw["position_ids"] = torch.cat([head, positions + num], dim=1)
            else:  # the position hook moves the text positions back in front of the zeroed prompt positions
                kw["position_ids"] = torch.cat([positions, positions.new_zeros(rows, num)], dim=1)
        self._pending = num
        return (), kw

    def _encoder_post(self, host: nn.Module, args: tuple, output: Any) -> None:
        self._pending = 0

    def _shift_positions(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        num = self._pending
        if not num:
            return None
        if output.shape[-2] <= num:
            raise ValueError(f"position embedding of length {output.shape[-2]} cannot hold {num} prompt positions")
        return torch.cat([torch.zeros_like(output[..., :num, :]), output[..., :-num, :]], dim=-2)


class PromptCrossMaskLayer(MethodLayer):
    """On the decoder of an encoder-decoder model: ``encoder_attention_mask' = [1_L ; encoder_attention_mask]`` when
    the encoder states are ``L`` positions longer than the mask (they came from a prompted encoder), so
    cross-attention sees the prompts as VL-Adapter's decoder does. No parameters."""

    def __init__(self, host: nn.Module, prompt_layer: PromptLayer) -> None:
        super().__init__()
        object.__setattr__(self, "_prompt_layer", prompt_layer)
        object.__setattr__(self, "_signature", inspect.signature(host.forward))

    def pre(self, host: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        kw = bind_kwargs(self._signature, args, kwargs)
        states, mask = kw.get("encoder_hidden_states"), kw.get("encoder_attention_mask")
        num = self._prompt_layer.num_virtual_tokens
        if states is None or mask is None or mask.dim() != 2 or states.shape[1] != mask.shape[1] + num:
            return None
        kw["encoder_attention_mask"] = torch.cat([mask.new_ones(mask.shape[0], num), mask], dim=1)
        return (), kw
