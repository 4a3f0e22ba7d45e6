"""Ladder Side Tuning: the side network and its injection into a frozen transformers model.

Per backbone stack (width ``d``, side width ``d_s = d / r``), with ``h_emb`` the input of backbone block 0 and
``h_i`` the output of backbone block ``i`` (Sung et al. 2022, "LST: Ladder Side-Tuning"; upstream
ylsung/Ladder-Side-Tuning ``seq2seq/third_party/models/t5/modeling_side_t5.py`` ``T5Stack`` /
``T5ForConditionalGeneration``)::

    s   = first_downsample(h_emb)                                  Linear(d -> d_s)       side_first_downsample
    for i in side_layers:                                          (layer dropping)
        mu = sigmoid(alpha_i / T)                                  alpha_i init 0, T = 0.1    side_gate_params
        s  = mu * s + (1 - mu) * downsample_i(h_i)                 Linear(d -> d_s)       side_downsamples[i]
        s  = side_block_i(s, <block i's masks / position bias>)    backbone block class, config / r
    s   = dropout(final_norm(s))                                   final_side_layer_norm
    out = upsample(s)                                              Linear(d_s -> d)       side_final_upsample

``out`` replaces the decoder stack's output (encoder-decoder) or the encoder stack's output (encoder-only model), so
the model's own frozen head reads it (T5: ``* d ** -0.5`` then the tied ``lm_head``, as upstream). The side
decoder's cross-attention reads the side encoder output ``s_enc`` (``side_encoder_hidden_states``); the backbone
decoder keeps reading the backbone encoder output.

Injection: one :class:`LSTLayer` on the model root holds every side parameter (``model.petl[name]``). Its
:meth:`LSTLayer.attach` registers a forward pre-hook and a post-hook (``always_call``) on each used stack. The pre-hook
hooks the stack's blocks for the duration of the call: every backbone block runs under ``torch.no_grad()`` (its
pre-hook switches grad mode off, its ``always_call`` post-hook restores it, also when the block raises) and
``h_emb``, every ``h_i`` and the arguments each block was called with are collected. The stack's post-hook removes
those hooks, runs the side network with autograd on and replaces the stack's output. No backbone activation is
saved for backward; the ladder inputs ``h_i`` are kept by the down-samplers (inputs of trainable layers, as
upstream). The embedding lookup and the stack's glue between blocks run
in the caller's grad mode, so a trainable input embedding (VL-T5's visual embedding) still gets gradients through
``first_downsample``, as upstream's ``side_first_downsample(dropout(inputs_embeds))``.

Side blocks get the arguments their backbone block got (masks, T5 position bias: side blocks without their own
relative attention bias reuse the backbone's, as upstream), with ``hidden_states`` replaced, ``encoder_hidden_states``
replaced by ``s_enc`` and no KV cache: the side decoder keeps none, so incremental decoding with a cache is refused
(generate with ``use_cache=False``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from peft_core.layer import MethodLayer, map_primary_output, primary_output
from peft_core.tuners.lst.config import LSTConfig
from peft_core.tuners.lst.families import StackRef
from peft_core.tuners.lst.pruning import select_indices, slice_param


class LSTStateError(RuntimeError):
    """The LST side network was called in a state it cannot handle (missing side encoder states, a KV cache)."""


class _BlockCall:
    __slots__ = ("args", "kwargs", "output")

    def __init__(self, args: tuple, kwargs: dict) -> None:
        self.args, self.kwargs, self.output = args, kwargs, None


class _Capture:
    """Forward hooks on the backbone blocks of one stack: block 0's input and every block's arguments and output.

    While the hooks are installed every backbone block runs with autograd off (the pre-hook switches grad mode off,
    the post-hook restores it; leaving the context restores the mode it was entered with, also after an error).
    """

    def __init__(self, blocks: nn.ModuleList) -> None:
        self.blocks = blocks
        self.calls: dict[int, _BlockCall] = {}
        self.first_input: torch.Tensor | None = None
        self._handles: list = []
        self._modes: list[bool] = []
        self._entry_mode = True

    def __enter__(self) -> _Capture:
        self._entry_mode = torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            self._handles.append(block.register_forward_pre_hook(functools.partial(self._pre, i), with_kwargs=True))
            self._handles.append(block.register_forward_hook(functools.partial(self._post, i), always_call=True))
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(restore_grad_mode=True)

    def close(self, restore_grad_mode: bool) -> None:
        """Remove the hooks; optionally restore the grad mode the capture was entered with."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if restore_grad_mode:
            torch.set_grad_enabled(self._entry_mode)

    def _pre(self, i: int, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if i in self.calls:
            raise LSTStateError(f"backbone block {i} ran twice in one stack call; LST expects one pass per block")
        self.calls[i] = _BlockCall(args, dict(kwargs))
        if i == 0:
            self.first_input = _argument(module, args, kwargs, "hidden_states")
        self._modes.append(torch.is_grad_enabled())
        torch.set_grad_enabled(False)

    def _post(self, i: int, module: nn.Module, args: tuple, output: Any) -> None:
        if self._modes:
            torch.set_grad_enabled(self._modes.pop())
        if output is not None and i in self.calls:  # None: the block raised (always_call hook)
            self.calls[i].output = primary_output(output)


@functools.cache
def _forward_parameters(cls: type) -> tuple[str, ...]:
    """Names of ``cls.forward``'s parameters after ``self`` (cached per block class)."""
    return tuple(inspect.signature(cls.forward).parameters)[1:]


def _argument(block: nn.Module, args: tuple, kwargs: dict, name: str) -> Any:
    if name in kwargs:
        return kwargs[name]
    params = _forward_parameters(type(block))
    idx = params.index(name) if name in params else len(args)
    return args[idx] if idx < len(args) else None


def _side_arguments(block: nn.Module, call: _BlockCall, hidden: torch.Tensor,
                    encoder_states: torch.Tensor | None) -> tuple[tuple, dict]:
    """The backbone block's call with hidden states, encoder states and the KV cache replaced."""
    args, kwargs = list(call.args), dict(call.kwargs)
    params = _forward_parameters(type(block))

    def put(name: str, value: Any, only_if_set: bool) -> None:
        if name in kwargs:
            if not only_if_set or kwargs[name] is not None:
                kwargs[name] = value
            return
        idx = params.index(name) if name in params else -1
        if 0 <= idx < len(args) and (not only_if_set or args[idx] is not None):
            args[idx] = value

    put("hidden_states", hidden, only_if_set=False)
    if _argument(block, call.args, call.kwargs, "encoder_hidden_states") is not None:
        if encoder_states is None:
            raise LSTStateError("a side decoder block needs the side encoder states, but none were given")
        put("encoder_hidden_states", encoder_states, only_if_set=True)
    put("past_key_values", None, only_if_set=True)
    return tuple(args), kwargs


class LSTSideStack(nn.Module):
    """The side network of one backbone stack (Sung et al. 2022; upstream ``modeling_side_t5.py:T5Stack``)::

        s = first_downsample(h_emb)
        for i in layers:  mu_i = sigmoid(alpha_i / T);  s = blocks[i](mu_i * s + (1 - mu_i) * downsamples[i](h_i))
        return dropout(final_norm(s))

    Parameters::

        first_downsample   Linear(d, d_s)
        downsamples[i]     Linear(d, d_s)           i in layers
        gates[i]           (1,)  alpha_i
        blocks[i]          backbone block class with the config / r
        final_norm         the stack's final-norm class (T5LayerNorm) or LayerNorm, width d_s
    """

    def __init__(self, ref: StackRef, layers: list[int], config: LSTConfig) -> None:
        super().__init__()
        family, cfg, r = ref.family, ref.module.config, config.reduction_factor
        self.layers = list(layers)
        self.side_config = family.side_config(cfg, r)
        d = family.hidden(cfg)
        self.width = d // r
        backbone_blocks = family.blocks(ref.module)
        self.first_downsample = nn.Linear(d, self.width, bias=config.bias_sampling)
        self.downsamples = nn.ModuleDict({str(i): nn.Linear(d, self.width, bias=config.bias_sampling)
                                          for i in self.layers})
        self.gates = nn.ParameterDict({str(i): nn.Parameter(torch.full((1,), float(config.gate_alpha)))
                                       for i in self.layers})
        self.blocks = nn.ModuleDict({str(i): family.make_block(backbone_blocks[i], self.side_config, i)
                                     for i in self.layers})
        self.final_norm = family.make_final_norm(ref.module, cfg, self.width)
        self.dropout = nn.Dropout(float(getattr(cfg, family.dropout_attr)))
        self.gate_T = float(config.gate_T)
        for lin in [self.first_downsample, *self.downsamples.values()]:
            init_sampler(lin)

    def gate(self, i: int) -> torch.Tensor:
        """``mu_i = sigmoid(alpha_i / T)``."""
        return torch.sigmoid(self.gates[str(i)] / self.gate_T)

    def forward(self, capture: _Capture, encoder_states: torch.Tensor | None = None) -> torch.Tensor:
        if capture.first_input is None:
            raise LSTStateError("the backbone stack ran no block; nothing to side-tune")
        s = self.first_downsample(capture.first_input)
        for i in self.layers:
            call = capture.calls[i]
            mu = self.gate(i)
            s = mu * s + (1 - mu) * self.downsamples[str(i)](call.output)
            block = self.blocks[str(i)]
            args, kwargs = _side_arguments(block, call, s, encoder_states)
            s = primary_output(block(*args, **kwargs))
        return self.dropout(self.final_norm(s))


def init_sampler(linear: nn.Linear) -> None:
    """Upstream ``T5PreTrainedModel._init_weights`` for new ``nn.Linear`` (side samplers): N(0, 0.01), zero bias."""
    with torch.no_grad():
        linear.weight.normal_(0.0, 0.01)
        if linear.bias is not None:
            linear.bias.zero_()


class LSTLayer(MethodLayer):
    """Ladder Side Tuning on a whole model (host = the model root). Sung et al. 2022; upstream
    ylsung/Ladder-Side-Tuning ``seq2seq/third_party/models/t5/modeling_side_t5.py``::

        s_enc = side_encoder(h_emb^enc, h_1^enc ..)                         (backbone blocks run without autograd)
        s_dec = side_decoder(h_emb^dec, h_1^dec .., cross-attending to s_enc)
        decoder output (encoder output for an encoder-only model)  <-  upsample(s_dec)   Linear(d / r -> d)

    Submodules: ``encoder`` (:class:`LSTSideStack`), ``decoder`` (or ``None`` for an encoder-only model) and
    ``upsample`` ``Linear(d_s, d)``. ``stack_names`` are the backbone stacks it wraps.
    """

    def __init__(self, model: nn.Module, stacks: list[StackRef], config: LSTConfig) -> None:
        super().__init__()
        enc = next(s for s in stacks if not s.is_decoder)
        dec = next((s for s in stacks if s.is_decoder), None)
        self.stack_names = {"encoder": enc.name, **({"decoder": dec.name} if dec is not None else {})}
        self.families = {"encoder": enc.family, **({"decoder": dec.family} if dec is not None else {})}
        self.encoder = LSTSideStack(enc, config.layers_for(False, len(enc.family.blocks(enc.module))), config)
        self.decoder = (LSTSideStack(dec, config.layers_for(True, len(dec.family.blocks(dec.module))), config)
                        if dec is not None else None)
        out_stack = dec if dec is not None else enc
        d = out_stack.family.hidden(out_stack.module.config)
        self.upsample = nn.Linear(self.encoder.width, d, bias=config.bias_sampling)
        init_sampler(self.upsample)
        self._captures: dict[str, tuple[_Capture, torch.Tensor | None]] = {}
        self._encoder_cache: tuple[torch.Tensor, torch.Tensor] | None = None
        if config.init == "magnitude":
            self.init_from_backbone(model)

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles drop the per-call state (captures, the side encoder output of the last call)."""
        state = self.__dict__.copy()
        state["_captures"], state["_encoder_cache"] = {}, None
        return state

    # ------------------------------------------------------------------------------------------------ wiring
    def sides(self) -> dict[str, LSTSideStack]:
        return {role: getattr(self, role) for role in self.stack_names}

    def attach(self, host: nn.Module) -> None:
        for role, name in self.stack_names.items():
            stack = host.get_submodule(name)
            self._handles.append(
                stack.register_forward_pre_hook(functools.partial(self._stack_pre, role), with_kwargs=True))
            self._handles.append(stack.register_forward_hook(
                functools.partial(self._stack_post, role), with_kwargs=True, always_call=True))

    def detach(self, host: nn.Module) -> None:
        super().detach(host)
        for capture, _ in self._captures.values():
            capture.close(restore_grad_mode=False)
        self._captures.clear()
        self._encoder_cache = None

    def _stack_pre(self, role: str, stack: nn.Module, args: tuple, kwargs: dict) -> None:
        """Before a backbone stack runs: check the call, then hook its blocks (see :class:`_Capture`)."""
        stale = self._captures.pop(role, None)
        if stale is not None:  # left over from an interrupted call
            stale[0].close(restore_grad_mode=False)
        if not self.active or self.merged:
            return
        side_encoder = None
        if role == "decoder":
            cache = _call_argument(stack.forward, args, kwargs, "past_key_values")
            if cache is not None and hasattr(cache, "get_seq_length") and int(cache.get_seq_length()) > 0:
                raise LSTStateError("LST keeps no KV cache for its side decoder; run generation with use_cache=False")
            side_encoder = self._side_encoder_states(_call_argument(stack.forward, args, kwargs,
                                                                    "encoder_hidden_states"))
        self._captures[role] = (_Capture(self.families[role].blocks(stack)).__enter__(), side_encoder)

    def _stack_post(self, role: str, stack: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        """After a backbone stack ran: run the side network; replace the output (decoder / encoder-only model) or
        keep the side encoder states for the side decoder."""
        entry = self._captures.pop(role, None)
        if entry is None:
            return None
        capture, side_encoder = entry
        capture.__exit__()
        if output is None:  # the stack raised; always_call hook
            return None
        s = self.sides()[role](capture, side_encoder)
        if role == "encoder" and self.decoder is not None:
            self._encoder_cache = (primary_output(output), s)
            return None
        up = self.upsample(s)
        return map_primary_output(output, lambda _: up)

    def _side_encoder_states(self, encoder_states: torch.Tensor | None) -> torch.Tensor:
        """The side encoder output matching the ``encoder_hidden_states`` the backbone decoder received: the same
        tensor, an equal one, or one repeated per beam (``repeat_interleave`` along the batch)."""
        if encoder_states is None:
            raise LSTStateError("the LST side decoder needs encoder_hidden_states (run the encoder-decoder model)")
        if self._encoder_cache is None:
            raise LSTStateError("the LST side decoder ran before the side encoder; call the model's encoder first")
        backbone, side = self._encoder_cache
        if encoder_states is backbone:
            return side
        if encoder_states.shape[1:] == backbone.shape[1:] and encoder_states.shape[0] % backbone.shape[0] == 0:
            k = encoder_states.shape[0] // backbone.shape[0]
            expanded = backbone if k == 1 else backbone.repeat_interleave(k, dim=0)
            if torch.equal(encoder_states, expanded):
                return side if k == 1 else side.repeat_interleave(k, dim=0)
        raise LSTStateError(
            "the decoder got encoder_hidden_states that the LST side encoder did not produce; run the encoder through "
            "this model with the adapter active before decoding"
        )

    # ------------------------------------------------------------------------------------------------ pruning
    def backbone_parameter_names(self) -> list[str]:
        """Model names of the backbone parameters the side blocks and final norms are pruned from."""
        names = []
        for role, side in self.sides().items():
            family, stack = self.families[role], self.stack_names[role]
            for i in side.layers:
                prefix = f"{stack}.{family.blocks_attr}.{i}."
                names.extend(prefix + n for n, _ in side.blocks[str(i)].named_parameters())
            if family.final_norm_attr:
                names.extend(f"{stack}.{family.final_norm_attr}.{n}" for n, _ in side.final_norm.named_parameters())
        return names

    def prune_indices(self, model: nn.Module, importance: Mapping[str, torch.Tensor] | None = None
                      ) -> tuple[torch.Tensor, dict[str, dict[int, dict[str, torch.Tensor]]]]:
        """Residual indices and ``{role: {layer: {group: indices}}}`` chosen from ``importance`` (model parameter
        name -> tensor; default ``|W|``)."""
        params = dict(model.named_parameters())

        def imp(name: str) -> torch.Tensor:
            if importance is None:
                return params[name].detach().abs()
            if name not in importance:
                raise KeyError(f"LST: no importance for backbone parameter {name!r}")
            return importance[name]

        entries, keys, extra = [], [], []
        for role, side in self.sides().items():
            family, stack = self.families[role], self.stack_names[role]
            heads = family.heads(side.side_config)
            hd = family.head_dim(side.side_config)
            keeps = {"attn": heads * hd, "xattn": heads * hd, "ffn": int(getattr(side.side_config, family.ffn_attr))}
            for i in side.layers:
                local = [n for n, _ in side.blocks[str(i)].named_parameters()]
                prefix = f"{stack}.{family.blocks_attr}.{i}."
                entries.append(({n: imp(prefix + n) for n in local}, {n: family.dims(n) for n in local}, keeps, heads))
                keys.append((role, i))
            if family.final_norm_attr:
                norm = f"{stack}.{family.final_norm_attr}."
                extra.extend(imp(norm + n) for n, _ in side.final_norm.named_parameters())
        res, chosen = select_indices(entries, extra, self.encoder.width)
        out: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
        for (role, i), sel in zip(keys, chosen):
            out.setdefault(role, {})[i] = sel
        return res, out

    @torch.no_grad()
    def init_from_backbone(self, model: nn.Module, importance: Mapping[str, torch.Tensor] | None = None) -> None:
        """Copy into every side block (and T5 final norm) the backbone weights kept by :meth:`prune_indices`.
        A backbone on the ``meta`` device (shapes only) is left alone."""
        if any(p.is_meta for p in model.parameters()):
            return
        params = dict(model.named_parameters())
        res, chosen = self.prune_indices(model, importance)
        for role, side in self.sides().items():
            family, stack = self.families[role], self.stack_names[role]
            for i in side.layers:
                prefix = f"{stack}.{family.blocks_attr}.{i}."
                for n, p in side.blocks[str(i)].named_parameters():
                    value = slice_param(params[prefix + n], family.dims(n), chosen[role][i])
                    if value.shape != p.shape:
                        raise ValueError(f"LST pruning of {prefix + n}: got {tuple(value.shape)}, the side block "
                                         f"expects {tuple(p.shape)}")
                    p.copy_(value)
            if family.final_norm_attr:
                for n, p in side.final_norm.named_parameters():
                    p.copy_(params[f"{stack}.{family.final_norm_attr}.{n}"].index_select(0, res.to(p.device)))


def _call_argument(fn: Callable, args: tuple, kwargs: dict, name: str) -> Any:
    if name in kwargs:
        return kwargs[name]
    try:
        bound = inspect.signature(fn).bind_partial(*args, **kwargs)
    except TypeError:
        return None
    return bound.arguments.get(name)
