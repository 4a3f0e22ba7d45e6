"""UniPT side network: parallel interaction + confidence aggregation over a frozen backbone's layer features.

One module reproduces the four upstream hosts (Paranioar/UniPT @ 3fa457d987); which one is set by
:class:`~peft_core.tuners.unipt.config.UniPTConfig`:

* ``VSE-infty/lib/adapter_for_transformer.py:Our_tuning_for_transformer`` (:meth:`UniPTConfig.vse_text`)
* ``VSE-infty/lib/adapter_for_cnn.py:Our_tuning_for_resnet`` (:meth:`UniPTConfig.vse_image`)
* ``CLIP4Clip/modules/module_adapter.py:Our_tuning_for_transformer`` (:meth:`UniPTConfig.clip4clip_visual` /
  :meth:`UniPTConfig.clip4clip_text`)
* ``CLIP-ViL/src/lxrt/modeling.py:LXRTEncoder`` side network (:meth:`UniPTConfig.clipvil`)
* ``MDETR/models/transformer.py:Transformer`` side network (:meth:`UniPTConfig.mdetr_encoder` /
  :meth:`UniPTConfig.mdetr_decoder`)

:class:`UniPTLayer` is the :class:`~peft_core.layer.MethodLayer` that ``add_adapter`` puts on the model root: it runs
the backbone without autograd, collects the features with forward hooks and replaces the output with the side's.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from peft_core.layer import PETL_ATTR, MethodLayer, primary_input, primary_output
from peft_core.tuners.unipt import ops
from peft_core.tuners.unipt.blocks import (
    init_side,
    make_crosser,
    make_downsample,
    make_identity_conv,
    make_projection,
    make_up,
)
from peft_core.tuners.unipt.config import UniPTConfig


class UniPTOutput(NamedTuple):
    """``output``: the side features; ``confidence``: the per-target softmax weights ``p`` ``(B, n_targets)``."""

    output: Tensor
    confidence: Tensor


class UniPTSide(nn.Module):
    """UniPT side network (tokens or CNN pyramid), trained while the backbone stays frozen.

    Token input (``features[i]`` ``(B, L, C_i)``, ``mask`` ``(B, L)`` 1 = valid)::

        A = D_a(h_last)              (anchor="last_sequence")   or   A = D_a(raw_anchor) (B,1,d) (anchor="token")
        a = masked_mean(A)                                      or   a = A[:, 0]
        for k, i in enumerate(targets):
            T_k = D_k(h_i)
            T_k += Crosser_k(l1norm(relu(T_k C^T * mask_C[:, None, :])) C)          (cross_context, no identity)
            t_k = masked_mean(T_k)
            W_k = l1norm(relu(A T_k^T * mask[:, None, :]), dim=-1)  (+ I if identity)  # mask on the KEY axis only
            M_k = W_k T_k  (+ T_k[b, position[b]] or T_k[:, 0] if target_token_residual)
            c_k = gate(a * t_k)                                                        # Linear(d, 1), shared
        p = softmax(c, dim=1);  M = sum_k p_k M_k
        Y = Up(A + Proj(M))   (residual="anchor")   or   Y = raw_anchor + Up(Proj(M))  (residual="raw_anchor")

    CNN input (``features[i]`` ``(B, C_i, H_i, W_i)``, rates ``r_i = H_i / H_last`` from the actual sizes): each
    target map is first aligned to the last grid with :func:`~peft_core.tuners.unipt.ops.window_weighted_pool`
    guided by ``ReLU(Conv1x1(h_last -> C_i))``, then reduced by Conv1x1+BN and flattened; the interaction above runs
    on the flattened ``H_last * W_last`` grid (no mask, plain means); ``Y = flat(Up(A + Proj(roll(M))))``.

    The weights ``p`` of the last call are kept (detached) in :attr:`last_confidence`.
    """

    def __init__(self, config: UniPTConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        d, ln_eps, sizes = config.d, config.layer_norm_eps, config.hidden_sizes
        self.targets: list[int] = config.targets
        anchor_in = sizes[-1] if config.anchor == "last_sequence" else config.embed_size
        self.anchor_downsample = make_downsample(config.downsample, anchor_in, d, ln_eps=ln_eps)
        self.downsamples = nn.ModuleList(
            make_downsample(config.downsample, sizes[i], d, ln_eps=ln_eps) for i in self.targets
        )
        self.projection = make_projection(config.projection, d, config.embed_size, ln_eps=ln_eps)
        self.up = make_up(config.up, d, config.embed_size, ln_eps=ln_eps)
        self.gate = nn.Linear(d, 1)
        if config.input_kind == "cnn_pyramid":
            self.identity_convs = nn.ModuleList(make_identity_conv(sizes[-1], sizes[i]) for i in self.targets)
        if config.cross_context:
            self.crossers = nn.ModuleList(make_crosser(d, ln_eps=ln_eps) for _ in self.targets)
        init_side(self, config.init, std=config.init_std)
        self.last_confidence: Tensor | None = None

    @property
    def dtype(self) -> torch.dtype:
        return self.gate.weight.dtype

    # ------------------------------------------------------------------------------------------------- forward
    def forward(
        self,
        features: Sequence[Tensor] | Tensor,
        *,
        mask: Tensor | None = None,
        lengths: Tensor | None = None,
        anchor: Tensor | None = None,
        position: Tensor | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
    ) -> UniPTOutput:
        """Run the side network.

        Args:
            features: one tensor per entry of ``config.hidden_sizes`` (a list, or a stacked ``(N, ...)`` tensor);
                entries that are neither a target nor the anchor may be ``None``.
            mask: ``(B, L)`` bool/float, 1 = valid token (tokens only). Or give ``lengths`` ``(B,)`` instead.
            anchor: raw anchor token ``(B, E)`` or ``(B, 1, E)`` (``anchor="token"`` only).
            position: ``(B,)`` index of the token added by ``target_token_residual`` (CLIP4Clip text: EOT =
                ``input_ids.argmax(-1)``); ``None`` adds token 0 (CLS).
            context: ``(B, L_c, d)`` context of the crossers (``cross_context`` only), ``context_mask`` ``(B, L_c)``.

        Returns:
            :class:`UniPTOutput` ``(output, confidence)``. ``output``: ``(B, L, out_dim)`` for tokens,
            ``(B, E)`` for ``anchor="token"``, ``(B, H_last*W_last, out_dim)`` for a CNN pyramid,
            ``(n_targets + 1, B, L, out_dim)`` with ``output_levels``.
        """
        features = self._check_features(features)
        self._check_extras(anchor, context)
        if self.config.input_kind == "cnn_pyramid":
            if mask is not None or lengths is not None:
                raise ValueError("UniPT cnn_pyramid takes no mask/lengths (upstream uses none)")
            out, p = self._forward_cnn(features)
        else:
            mask = self._resolve_mask(features, mask, lengths)
            out, p = self._forward_tokens(features, mask, anchor, position, context, context_mask)
        self.last_confidence = p.detach()
        return UniPTOutput(out, p)

    def _aggregate(self, merged: list[Tensor], confidences: list[Tensor]) -> tuple[Tensor, Tensor]:
        p = torch.softmax(torch.cat(confidences, dim=1), dim=1)
        stacked = torch.stack(merged, dim=1)
        return torch.sum(stacked * p[:, :, None, None], dim=1), p

    def _interact(self, query: Tensor, context: Tensor, mask: Tensor | None, identity: bool) -> Tensor:
        cfg = self.config
        return ops.parallel_interaction(query, context, mask, identity=identity, eps=cfg.eps, mode=cfg.l1norm_mode)[0]

    def _forward_tokens(self, feats, mask, raw_anchor, position, context, context_mask) -> tuple[Tensor, Tensor]:
        cfg = self.config
        clamp = cfg.masked_mean_clamp
        if cfg.anchor == "token":
            raw_anchor = raw_anchor.to(self.dtype)
            if raw_anchor.dim() == 2:
                raw_anchor = raw_anchor.unsqueeze(1)
            anchor_feats = self.anchor_downsample(raw_anchor)
            anchor = anchor_feats[:, 0, :]
        else:
            anchor_feats = self.anchor_downsample(feats[-1])
            anchor = ops.masked_mean(anchor_feats, mask, clamp=clamp)
        merged, confidences, levels = [], [], []
        for k, index in enumerate(self.targets):
            target_feats = self.downsamples[k](feats[index])
            if cfg.cross_context:
                related = self._interact(target_feats, context, context_mask, identity=False)
                target_feats = target_feats + self.crossers[k](related)
            levels.append(target_feats)
            target = ops.masked_mean(target_feats, mask, clamp=clamp)
            merged_k = self._interact(anchor_feats, target_feats, mask, identity=cfg.identity)
            if cfg.target_token_residual:
                if position is not None:
                    token = target_feats[torch.arange(target_feats.shape[0], device=position.device), position]
                else:
                    token = target_feats[:, 0, :]
                merged_k = merged_k + token.unsqueeze(1)
            merged.append(merged_k)
            confidences.append(self.gate(anchor * target))
        merged_all, p = self._aggregate(merged, confidences)
        if cfg.residual == "raw_anchor":
            return (raw_anchor + self.up(self.projection(merged_all))).squeeze(1), p
        fused = anchor_feats + self.projection(merged_all)
        if cfg.output_levels:
            return self.up(torch.stack([*levels, fused])), p
        out = self.up(fused)
        return (out.squeeze(1) if cfg.anchor == "token" else out), p

    def _forward_cnn(self, feats: list[Tensor]) -> tuple[Tensor, Tensor]:
        cfg = self.config
        last = feats[-1]
        grid = (last.shape[-2], last.shape[-1])
        rates = self.spatial_rates(feats)
        anchor_map = self.anchor_downsample(last)
        anchor_flat = ops.flat_featuremap(anchor_map)
        anchor = anchor_flat.mean(dim=1)
        merged, confidences = [], []
        for k, index in enumerate(self.targets):
            raw = feats[index]
            guide = self.identity_convs[k](last)
            pooled = ops.window_weighted_pool(raw, guide, rates[k], eps=cfg.eps, mode=cfg.l1norm_mode)
            target_flat = ops.flat_featuremap(self.downsamples[k](pooled))
            merged.append(self._interact(anchor_flat, target_flat, None, identity=cfg.identity))
            confidences.append(self.gate(anchor * target_flat.mean(dim=1)))
        merged_all, p = self._aggregate(merged, confidences)
        fused = anchor_map + self.projection(ops.roll_featuremap(merged_all, grid))
        return ops.flat_featuremap(self.up(fused)), p

    # -------------------------------------------------------------------------------------------------- checks
    def spatial_rates(self, features: Sequence[Tensor]) -> list[tuple[int, int]]:
        """Per-target ``(r_h, r_w)`` of a CNN pyramid relative to its last map; ``ValueError`` if not integers."""
        shapes = [(features[i].shape[-2], features[i].shape[-1]) for i in self.targets]
        shapes.append((features[-1].shape[-2], features[-1].shape[-1]))
        try:
            return ops.spatial_rates(shapes, what="target maps")[:-1]
        except ValueError as exc:
            layers = [*self.targets, len(features) - 1]
            raise ValueError(f"{exc} (layer indices {layers})") from None

    def _check_features(self, features: Sequence[Tensor] | Tensor) -> list[Tensor]:
        cfg = self.config
        feats = list(features.unbind(0)) if isinstance(features, Tensor) else list(features)
        if len(feats) != len(cfg.hidden_sizes):
            raise ValueError(
                f"UniPT expected {len(cfg.hidden_sizes)} features (config.hidden_sizes), got {len(feats)}"
            )
        used = set(self.targets)
        if cfg.anchor == "last_sequence":
            used.add(len(feats) - 1)
        ndim, axis = (4, 1) if cfg.input_kind == "cnn_pyramid" else (3, -1)
        for i in sorted(used):
            f = feats[i]
            if not isinstance(f, Tensor) or f.dim() != ndim or f.shape[axis] != cfg.hidden_sizes[i]:
                shape = tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__
                want = "(B, C, H, W)" if ndim == 4 else "(B, L, C)"
                raise ValueError(
                    f"UniPT features[{i}] has shape {shape}; expected {want} with C = hidden_sizes[{i}] = "
                    f"{cfg.hidden_sizes[i]}"
                )
            feats[i] = f.to(self.dtype)
        return feats

    def _check_extras(self, anchor: Tensor | None, context: Tensor | None) -> None:
        cfg = self.config
        if (anchor is None) == (cfg.anchor == "token"):
            need = "needs an" if cfg.anchor == "token" else "takes no"
            raise ValueError(f"UniPT with anchor={cfg.anchor!r} {need} `anchor` tensor")
        if (context is None) == cfg.cross_context:
            need = "needs a" if cfg.cross_context else "takes no"
            raise ValueError(f"UniPT with cross_context={cfg.cross_context} {need} `context` tensor")

    def _resolve_mask(self, feats: list[Tensor], mask: Tensor | None, lengths: Tensor | None) -> Tensor | None:
        if mask is not None and lengths is not None:
            raise ValueError("UniPT: give either `mask` or `lengths`, not both")
        ref = feats[self.targets[0]]
        if lengths is not None:
            mask = ops.mask_from_lengths(lengths, ref.shape[1])
        if mask is not None and tuple(mask.shape) != tuple(ref.shape[:2]):
            raise ValueError(f"UniPT mask has shape {tuple(mask.shape)}; expected (B, L) = {tuple(ref.shape[:2])}")
        return mask


# ================================================================================================ the method layer
@dataclass(frozen=True)
class FeatureSources:
    """Where a :class:`UniPTLayer` reads its inputs: dotted module names relative to the host (the model root).

    ``layers``: modules whose outputs are the features, in call order; ``include_input``: the input of
    ``layers[0]`` is feature 0; ``anchor``: module whose output is the raw anchor token (``anchor="token"``);
    ``output``: module whose output is replaced by the side output (``""`` = the root).
    """

    layers: tuple[str, ...]
    include_input: bool
    anchor: str | None = None
    output: str = ""

    @property
    def num_features(self) -> int:
        return len(self.layers) + int(self.include_input)


@dataclass
class _FrozenRun:
    """Bookkeeping of one forward of a host, shared by its UniPT layers (several adapters, e.g. the CLIP4Clip visual
    and text sides on one CLIPModel): grad stays off until the last active layer has its output (``pending``); the
    ``petl`` child hidden from a container host comes back when the last layer's root hook has run (``members``)."""

    outer: bool
    pending: set[int] = field(default_factory=set)
    members: set[int] = field(default_factory=set)
    grad_restored: bool = False
    hidden_petl: nn.Module | None = None


_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
"""Hosts whose forward calls every child (``nn.Sequential``, timm ``features_only`` = ``nn.ModuleDict``)."""
_RUN_ATTR = "_petl_unipt_run"
_MASK_KWARGS = ("attention_mask", "src_key_padding_mask", "key_padding_mask")
_SIGNATURES: dict[type, inspect.Signature | None] = {}


def _call_arguments(host: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The host's forward arguments by name (positional ones bound through the forward signature)."""
    cls = type(host)
    if cls not in _SIGNATURES:
        try:
            _SIGNATURES[cls] = inspect.signature(host.forward)
        except (TypeError, ValueError):
            _SIGNATURES[cls] = None
    sig = _SIGNATURES[cls]
    if sig is None or not args:
        return dict(kwargs)
    try:
        bound = sig.bind_partial(*args, **kwargs)
    except TypeError:
        return dict(kwargs)
    named = {k: v for k, v in bound.arguments.items() if sig.parameters[k].kind is not inspect.Parameter.VAR_KEYWORD}
    for k, p in sig.parameters.items():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            named.update(bound.arguments.get(k, {}))
    return named


def read_mask(call: dict[str, Any], mask_kwarg: str | None) -> Tensor | None:
    """The ``(B, L)`` bool validity mask (True = token) of a forward call, or ``None``.

    ``mask_kwarg="auto"`` takes the first of ``attention_mask`` / ``src_key_padding_mask`` / ``key_padding_mask``
    that was given; a ``*padding_mask`` (True = padding, PyTorch's convention) is inverted.
    """
    if mask_kwarg is None:
        return None
    names = _MASK_KWARGS if mask_kwarg == "auto" else (mask_kwarg,)
    for name in names:
        value = call.get(name)
        if isinstance(value, Tensor):
            return ~value.bool() if name.endswith("padding_mask") else value != 0
    return None


def replace_output(output: Any, value: Tensor) -> Any:
    """``output`` with its main tensor replaced by ``value``.

    A tensor is replaced; a transformers ``ModelOutput`` / dict gets ``last_hidden_state`` (else its first entry)
    replaced; a tuple its element 0; a list (a ``features_only`` CNN's feature maps) is replaced as a whole.
    """
    if isinstance(output, Tensor | list):
        return value
    if isinstance(output, dict):
        key = "last_hidden_state" if "last_hidden_state" in output else next(iter(output.keys()))
        output[key] = value
        return output
    if isinstance(output, tuple):
        rest = output[1:]
        return type(output)(value, *rest) if hasattr(output, "_fields") else (value, *rest)
    raise TypeError(f"UniPT cannot replace the output of type {type(output).__name__}; expected a tensor, a "
                    "ModelOutput / dict, a tuple or a list of feature maps (set output_module)")


class UniPTLayer(MethodLayer):
    """UniPT as a ``peft_core`` method layer on the model root (``add_adapter(model, UniPTConfig(...))``).

    One forward ``y = model(*args, **kwargs)`` of the host (the model root) computes::

        grad off                                   root forward pre-hook (mask / input_ids read from the call)
        h_0 .. h_{N-1}                             forward hooks on the layer modules; h_0 = input of the first one
                                                   with include_input; raw anchor = output of anchor_module
        Y, p = UniPTSide(h, mask=m, anchor=a, position=e)       under the caller's grad mode
        y = model output with its main tensor replaced by Y    forward hook of output_module (default: the root)
        grad back to the caller's mode                          at that hook, and always in the root forward hook

    i.e. ``Y = Up(A + Proj(sum_i p_i M_i))`` of :class:`UniPTSide` on the frozen backbone's features, as upstream
    (Paranioar/UniPT @ 3fa457d987: VSE-infty ``lib/encoders.py`` and CLIP4Clip ``modules/modeling.py`` call the
    backbone under ``torch.no_grad()`` and feed its hidden states to the side network).

    Why hooks and not a wrapped ``forward``: the model keeps its class and its ``forward`` (as every peft_core
    method); the root forward hook is registered with ``always_call=True``, so the grad mode comes back even when
    the forward raises. No activation of the backbone up to ``output_module`` is kept for backward and its
    parameters get no gradient; what runs after ``output_module`` (CLIP's normalisation and logits, BERT's pooler
    for ``output_module="encoder"``) runs under the caller's mode so the side output's gradient flows through it.
    When the root is a container whose forward calls every child (``nn.Sequential``, timm ``features_only`` =
    ``nn.ModuleDict``) its ``petl`` child is taken out of ``_modules`` for the duration of the forward.

    ``last_output`` (the side output, detached) and ``last_confidence`` (the softmax weights ``p`` over the target
    layers, ``(B, n_targets)``, detached) keep the results of the last forward. Only ``model(...)`` calls are
    adapted: methods that bypass the root's ``__call__`` (``CLIPModel.get_image_features``) run the plain backbone.
    """

    def __init__(self, config: UniPTConfig, sources: FeatureSources) -> None:
        super().__init__()
        if sources.num_features != len(config.hidden_sizes):
            raise ValueError(
                f"UniPT: {sources.num_features} feature sources but hidden_sizes has {len(config.hidden_sizes)} "
                "entries"
            )
        self.side = UniPTSide(config)
        self.sources = sources
        self.last_output: Tensor | None = None
        self._run: _FrozenRun | None = None
        self._reset()

    @property
    def config(self) -> UniPTConfig:
        return self.side.config

    @property
    def last_confidence(self) -> Tensor | None:
        """Confidence weights ``p`` ``(B, n_targets)`` of the last forward (detached)."""
        return self.side.last_confidence

    def _reset(self) -> None:
        self._running = False
        self._produced = False
        self._states: list[Tensor] = []
        self._anchor: Tensor | None = None
        self._side_kwargs: dict[str, Tensor] = {}

    # -------------------------------------------------------------------------------------------- hook plumbing
    def attach(self, host: nn.Module) -> None:
        src = self.sources
        layers = [host.get_submodule(name) for name in src.layers]
        if src.include_input:
            self._handles.append(layers[0].register_forward_pre_hook(self._collect_input, with_kwargs=True))
        self._handles.extend(layer.register_forward_hook(self._collect_output) for layer in layers)
        if src.anchor is not None:
            self._handles.append(host.get_submodule(src.anchor).register_forward_hook(self._collect_anchor))
        if src.output:
            self._handles.append(host.get_submodule(src.output).register_forward_hook(self._output_hook))
        self._handles.append(host.register_forward_pre_hook(self._start, with_kwargs=True))
        self._handles.append(host.register_forward_hook(self._end, with_kwargs=True, always_call=True))

    def detach(self, host: nn.Module) -> None:
        super().detach(host)
        self._reset()

    def _start(self, host: nn.Module, args: tuple, kwargs: dict) -> None:
        run = host.__dict__.get(_RUN_ATTR)
        if run is None:
            run = host.__dict__[_RUN_ATTR] = _FrozenRun(torch.is_grad_enabled())
            if isinstance(host, _CONTAINERS):
                # a container's forward would call the ``petl`` child: hide it for the duration of this forward
                run.hidden_petl = host._modules.pop(PETL_ATTR, None)
        run.members.add(id(self))
        self._run = run
        if not self.active or self.merged:
            return
        self._reset()
        cfg = self.config
        call = _call_arguments(host, args, kwargs)
        if cfg.input_kind == "tokens":
            mask = read_mask(call, cfg.mask_kwarg)
            if mask is not None:
                self._side_kwargs["mask"] = mask
            if cfg.target_token_residual and cfg.residual_token == "eot":
                ids = call.get("input_ids")
                if not isinstance(ids, Tensor):
                    raise ValueError("UniPT residual_token='eot' needs the model to be called with input_ids")
                self._side_kwargs["position"] = ids.argmax(dim=-1)
        run.pending.add(id(self))
        self._running = True
        torch.set_grad_enabled(False)

    def _release(self) -> None:
        """This layer no longer needs the backbone frozen; the last one of the host restores the grad mode."""
        run = self._run
        if run is None or id(self) not in run.pending:
            return
        run.pending.discard(id(self))
        if not run.pending and not run.grad_restored:
            run.grad_restored = True
            torch.set_grad_enabled(run.outer)

    def _end(self, host: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        try:
            if not self._running or output is None or self._produced:  # output None: the forward raised
                return None
            if not self.sources.output:
                return replace_output(output, self._compute())
            if self._states:
                raise RuntimeError(
                    f"UniPT: output_module {self.sources.output!r} did not run after the features were collected; "
                    "set output_module to a module the forward calls after the feature layers"
                )
            return None
        finally:
            self._release()
            self._reset()
            run, self._run = self._run, None
            if run is not None:
                run.members.discard(id(self))
                if not run.members:
                    if run.hidden_petl is not None:
                        host._modules[PETL_ATTR] = run.hidden_petl
                    host.__dict__.pop(_RUN_ATTR, None)

    def _collect_input(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._running:
            self._states.append(primary_input(args, kwargs))

    def _collect_output(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self._running:
            self._states.append(primary_output(output))

    def _collect_anchor(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self._running:
            self._anchor = primary_output(output)

    def _output_hook(self, module: nn.Module, args: tuple, output: Any) -> Any:
        if not self._running or self._produced:
            return None
        try:
            return replace_output(output, self._compute())
        finally:
            self._release()

    # ------------------------------------------------------------------------------------------------- compute
    def _compute(self) -> Tensor:
        self._produced = True
        states, self._states = self._states, []
        expected = len(self.config.hidden_sizes)
        if len(states) != expected:
            raise RuntimeError(
                f"UniPT collected {len(states)} features in this forward but hidden_sizes has {expected} entries "
                f"(layer modules {list(self.sources.layers)[:3]}..., include_input={self.sources.include_input}); "
                "each layer module must run exactly once per forward"
            )
        kwargs: dict[str, Tensor] = dict(self._side_kwargs)
        if self.config.anchor == "token":
            if self._anchor is None:
                raise RuntimeError(f"UniPT: anchor_module {self.sources.anchor!r} did not run before the output")
            kwargs["anchor"] = self._anchor
        with torch.set_grad_enabled(self._run.outer):
            out = self.side(states, **kwargs).output
        self.last_output = out.detach()
        return out

