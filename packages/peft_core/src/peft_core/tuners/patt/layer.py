"""PATT layer: a tanh bottleneck in parallel with the key/value (and/or query) projections of an attention.

    ad = W_up tanh(W_down x + b_down) + b_up            (W_down: m x C_in, W_up: (sum of chosen d) x m)
    ad = [dQ? | dK? | dV?]                              (one slice per adapted projection, in q, k, v order)
    K' = K + s dK,  V' = V + s dV  (patt_kv; patt_qv / patt_qk / patt_qkv analogously)

x is the input of the adapted projection (the window tokens after LN1, shift and partition in Swin). Upstream:
bruceyo/V-PETL@661198dd38:models/video_swin_transformer_patt.py:WindowAttention3D (``qkv_adapter``, ``patt_*``).

Where the adapter acts depends on the host attention:

* fused ``qkv`` Linear (timm ``Attention``, timm Swin ``WindowAttention``, Video Swin ``WindowAttention3D``, or a
  fused Linear targeted directly): a forward hook on the ``qkv`` Linear adds ``s * slice`` to the q, k or v third of
  its output ``[q | k | v]`` (timm and Video Swin reshape it to ``(B, N, 3, heads, head_dim)``);
* separate projections (``query/key/value``, ``q_proj/k_proj/v_proj``, ``q/k/v``): forward hooks on each adapted
  projection add their slice of the adapter output computed *from that projection's own input* (the encoder
  states for the key and value of a cross-attention). ``tanh(W_down x)`` and ``W_up(.)`` are computed once per
  distinct input tensor during one forward of the host (self-attention: once for q, k and v).

``nn.MultiheadAttention`` is rejected: its in-projection runs inside ``F.multi_head_attention_forward``, where no
hook reaches q, k or v, and ``nn.TransformerEncoderLayer``'s inference fast path bypasses the module's forward.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from peft_core.layer import MethodLayer, primary_input
from peft_core.targeting import TargetError
from peft_core.tuners.patt.config import PattConfig

PROJECTION_NAMES: tuple[tuple[str, str, str], ...] = (
    ("query", "key", "value"),
    ("q_proj", "k_proj", "v_proj"),
    ("q", "k", "v"),
)
"""Child names of separate query, key and value projections, in q, k, v order."""

MHA_UNSUPPORTED = (
    "PATT does not support nn.MultiheadAttention: its q/k/v in-projection runs inside "
    "F.multi_head_attention_forward where no hook reaches it (and nn.TransformerEncoderLayer's inference fast path "
    "bypasses the module's forward), and PATT is not linear in the weights, so it cannot be a weight delta; "
    "use a model whose attention has a fused `qkv` Linear or separate q/k/v Linears"
)


def host_layout(module: nn.Module) -> tuple[str, dict[str, nn.Linear]]:
    """How ``module`` exposes q, k and v: ``("fused", {"qkv": linear})`` or ``("separate", {"q": .., "k": ..,
    "v": ..})``. Raises :class:`TargetError` saying why when it exposes neither."""
    if isinstance(module, nn.MultiheadAttention):
        raise TargetError(MHA_UNSUPPORTED)
    if isinstance(module, nn.Linear):
        fused = module
    else:
        fused = module._modules.get("qkv")
    if isinstance(fused, nn.Linear):
        if fused.out_features % 3:
            raise TargetError(
                f"a fused qkv Linear needs out_features divisible by 3 ([q | k | v]), got {fused.out_features}"
            )
        return "fused", {"qkv": fused}
    for names in PROJECTION_NAMES:
        children = [module._modules.get(n) for n in names]
        if all(isinstance(c, nn.Linear) for c in children):
            return "separate", dict(zip("qkv", children, strict=True))
    raise TargetError(
        "PATT needs an attention module with a fused `qkv` nn.Linear child or separate nn.Linear children "
        f"{' / '.join('+'.join(n) for n in PROJECTION_NAMES)} (or a fused qkv nn.Linear itself)"
    )


def is_attention_host(module: nn.Module) -> bool:
    """True for a (non-Linear) module PATT can be attached to: used to pick the default targets."""
    if isinstance(module, nn.Linear):
        return False
    try:
        host_layout(module)
    except TargetError:
        return False
    return True


class PattAdapter(nn.Module):
    """``up(tanh(down(x)))``: ``down = Linear(C_in, m)``, ``up = Linear(m, out)`` (V-PETL ``qkv_adapter``)."""

    def __init__(self, in_features: int, mid_dim: int, out_features: int, *, bias: bool, init: str) -> None:
        super().__init__()
        self.down = nn.Linear(in_features, mid_dim, bias=bias)
        self.up = nn.Linear(mid_dim, out_features, bias=bias)
        if init == "zero_up":
            with torch.no_grad():
                nn.init.zeros_(self.up.weight)
                if self.up.bias is not None:
                    nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(torch.tanh(self.down(x)))


class PattLayer(MethodLayer):
    """V-PETL parallel attention adapter (PATT) on one attention module.

    ``ad = W_up tanh(W_down x)`` with ``ad = [dQ? | dK? | dV?]``; ``Q' = Q + s dQ``, ``K' = K + s dK``,
    ``V' = V + s dV`` for the projections chosen by ``mode`` (patt_kv adapts K and V). The attention itself
    (scaling, relative position bias, shift mask, softmax) is the host's own and unchanged.

    Upstream: bruceyo/V-PETL@661198dd38:models/video_swin_transformer_patt.py:WindowAttention3D.
    """

    def __init__(self, host: nn.Module, config: PattConfig) -> None:
        super().__init__()
        kind, projections = host_layout(host)
        self.kind = kind
        self.slices = config.slices
        self.scale = float(config.scale)
        if kind == "fused":
            qkv = projections["qkv"]
            sizes = dict.fromkeys("qkv", qkv.out_features // 3)
            in_features = qkv.in_features
        else:
            chosen = {c: projections[c] for c in self.slices}
            ins = {c: p.in_features for c, p in chosen.items()}
            if len(set(ins.values())) != 1:
                raise TargetError(
                    f"PATT shares one down projection across the adapted projections, but their in_features differ: "
                    f"{ins}; expected equal input sizes"
                )
            sizes = {c: p.out_features for c, p in projections.items()}
            in_features = next(iter(ins.values()))
        self.offsets: dict[str, tuple[int, int]] = {}
        offset = 0
        for c in self.slices:
            self.offsets[c] = (offset, offset + sizes[c])
            offset += sizes[c]
        self.adapter = PattAdapter(in_features, config.mid_dim, offset, bias=config.bias, init=config.init)
        self._cache: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._in_host = False

    # ------------------------------------------------------------------------------------------------ hooks
    def attach(self, host: nn.Module) -> None:
        kind, projections = host_layout(host)
        if kind == "fused":
            self._handles.append(projections["qkv"].register_forward_hook(self._fused_hook, with_kwargs=True))
            return
        self._handles.append(host.register_forward_pre_hook(self._enter_host))
        self._handles.append(host.register_forward_hook(self._leave_host, always_call=True))
        for c in self.slices:
            hook = functools.partial(self._projection_hook, c)
            self._handles.append(projections[c].register_forward_hook(hook, with_kwargs=True))

    def detach(self, host: nn.Module) -> None:
        super().detach(host)
        self._leave_host()

    def _enter_host(self, *_: Any) -> None:
        self._cache.clear()
        self._in_host = True

    def _leave_host(self, *_: Any) -> None:
        self._cache.clear()
        self._in_host = False

    def _adapter_output(self, x: torch.Tensor) -> torch.Tensor:
        """``up(tanh(down(x)))``, computed once per input tensor while the host runs."""
        if not self._in_host:
            return self.adapter(x)
        for ref, out in self._cache:
            if ref is x:
                return out
        out = self.adapter(x)
        self._cache.append((x, out))
        return out

    def _fused_hook(self, module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor | None:
        if not self.active or self.merged:
            return None
        ad = self.adapter(primary_input(args, kwargs)).to(output.dtype)
        size = output.shape[-1] // 3
        parts = []
        for i, c in enumerate("qkv"):
            part = output[..., i * size : (i + 1) * size]
            if c in self.offsets:
                start, end = self.offsets[c]
                part = part + self.scale * ad[..., start:end]
            parts.append(part)
        return torch.cat(parts, dim=-1)

    def _projection_hook(self, c: str, module: nn.Module, args: tuple, kwargs: dict,
                         output: torch.Tensor) -> torch.Tensor | None:
        if not self.active or self.merged:
            return None
        ad = self._adapter_output(primary_input(args, kwargs))
        start, end = self.offsets[c]
        return output + self.scale * ad[..., start:end].to(output.dtype)
