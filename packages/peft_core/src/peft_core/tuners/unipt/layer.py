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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

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
