"""Prefix tuning on windowed (Swin) attention.

For every window ``X`` (``B*nW, N, C``, after LN1, shift and partition) with q, k, v from the host's own ``qkv``:

    K' = [P_k ; K],  V' = [P_v ; V]                       (L prefix rows, shared by every window and batch item)
    A  = softmax((q * scale) K'^T + [0 | B_rel] + [0 | M_shift])       (B*nW, heads, N, L + N)
    out = proj(A V')

The prefix keys get no relative position bias (zeros) and are never masked by the shifted-window mask (zeros):
they are visible from every window. ``P_k, P_v`` are per-layer parameters (L x d each) or come from an MLP
``Embedding(L, d) -> Linear(d, mid) -> Tanh -> Linear(mid, 2d)`` (jxhe petl_factory ``Prefix``).

Upstream: V-PETL's ``prefix_kv`` / ``prefix_qk`` modes of
bruceyo/V-PETL@661198dd38:models/video_swin_transformer_patt.py:WindowAttention3D crash (a ``view`` shape error,
and a relative position bias ``(heads, N, N)`` added to attention logits ``(N, N + L)``); this module implements
the intended computation with the prefix bias padded by zeros.

Injection: the host's forward is replaced by an instance attribute (removed on detach) that computes the window
attention from the host's own parameters (``qkv``, ``proj``, ``num_heads``, ``scale``, relative position bias,
``attn_drop``, ``proj_drop``). With no active prefix layer it calls the class's forward, so the stock computation
is reproduced exactly. Hooks of other methods on ``qkv`` / ``proj`` (PATT, LoRA) keep acting.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from peft_core.layer import PETL_ATTR, MethodLayer
from peft_core.targeting import TargetError
from peft_core.tuners.window_prefix.config import WindowPrefixConfig


def window_attention_error(module: nn.Module) -> str | None:
    """Why ``module`` cannot carry window prefixes, or None if it is duck-typed as a Swin window attention."""
    qkv, proj = module._modules.get("qkv"), module._modules.get("proj")
    if not isinstance(qkv, nn.Linear) or qkv.out_features % 3:
        return "expected a window attention with a `qkv` nn.Linear whose out_features is 3 * attention dim"
    if not isinstance(proj, nn.Linear) or proj.in_features != qkv.out_features // 3:
        return f"expected a `proj` nn.Linear with in_features = {qkv.out_features // 3}"
    heads = getattr(module, "num_heads", None)
    if isinstance(heads, bool) or not isinstance(heads, int) or heads <= 0 or (qkv.out_features // 3) % heads:
        return f"expected an integer `num_heads` dividing the attention dim {qkv.out_features // 3}, got {heads!r}"
    if hasattr(module, "logit_scale"):
        return "cosine attention (Swin V2 `logit_scale`) is not supported; expected a scaled dot-product attention"
    scale = getattr(module, "scale", None)
    if isinstance(scale, bool) or not isinstance(scale, int | float):
        return f"expected a float `scale` (qk scaling), got {scale!r}"
    table = getattr(module, "relative_position_bias_table", None)
    index = getattr(module, "relative_position_index", None)
    has_table = isinstance(table, torch.Tensor) and isinstance(index, torch.Tensor)
    if not has_table and not callable(getattr(module, "_get_rel_pos_bias", None)):
        return ("expected a relative position bias: `relative_position_bias_table` + `relative_position_index` "
                "or a `_get_rel_pos_bias()` method")
    own = module.__dict__.get("forward")
    if own is not None and not isinstance(own, WindowPrefixForward):
        return "the module already has an instance-level forward (another method overrides it)"
    return None


def relative_position_bias(host: nn.Module, n: int) -> torch.Tensor:
    """The host's relative position bias for ``n`` tokens per window, ``(heads, n, n)``:
    ``table[index[:n, :n]]`` (Video Swin slices the index to the window actually used), else
    ``_get_rel_pos_bias()``."""
    table = getattr(host, "relative_position_bias_table", None)
    index = getattr(host, "relative_position_index", None)
    if isinstance(table, torch.Tensor) and isinstance(index, torch.Tensor):
        return table[index[:n, :n].reshape(-1)].reshape(n, n, -1).permute(2, 0, 1)
    return host._get_rel_pos_bias().reshape(host.num_heads, n, n)


def window_attention_with_prefix(host: nn.Module, x: torch.Tensor, mask: torch.Tensor | None,
                                 prefix_key: torch.Tensor, prefix_value: torch.Tensor) -> torch.Tensor:
    """Window attention of ``host`` on ``x`` (B_, N, C) with ``prefix_key`` / ``prefix_value`` (L, attn_dim)
    prepended to every window's keys and values; ``mask`` (nW, N, N) additive or None."""
    b_, n, _ = x.shape
    heads = host.num_heads
    qkv = host.qkv(x).reshape(b_, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # (B_, heads, N, d)
    length = prefix_key.shape[0]
    head_dim = q.shape[-1]
    pk = prefix_key.to(k.dtype).reshape(length, heads, head_dim).transpose(0, 1).expand(b_, -1, -1, -1)
    pv = prefix_value.to(v.dtype).reshape(length, heads, head_dim).transpose(0, 1).expand(b_, -1, -1, -1)
    k = torch.cat([pk, k], dim=2)
    v = torch.cat([pv, v], dim=2)
    q = q * host.scale
    attn = q @ k.transpose(-2, -1)  # (B_, heads, N, L + N)
    attn = attn + F.pad(relative_position_bias(host, n), (length, 0)).unsqueeze(0).to(attn.dtype)
    if mask is not None:
        num_windows = mask.shape[0]
        padded = F.pad(mask, (length, 0)).to(attn.dtype)
        attn = attn.view(-1, num_windows, heads, n, length + n) + padded.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, heads, n, length + n)
    attn = attn.softmax(dim=-1)
    attn_drop = getattr(host, "attn_drop", None)
    if attn_drop is not None:
        attn = attn_drop(attn)
    out = (attn @ v).transpose(1, 2).reshape(b_, n, -1)
    out = host.proj(out)
    proj_drop = getattr(host, "proj_drop", None)
    if proj_drop is not None:
        out = proj_drop(out)
    return out


def _active_layers(host: nn.Module) -> list[WindowPrefixLayer]:
    petl = host._modules.get(PETL_ATTR)
    if petl is None:
        return []
    return [m for m in petl.values() if isinstance(m, WindowPrefixLayer) and m.active and not m.merged]


def window_prefix_forward(self: nn.Module, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Instance forward installed on a window attention: the stock forward when no prefix layer is active, else
    :func:`window_attention_with_prefix` with the active layers' prefixes concatenated (adapter order)."""
    layers = _active_layers(self)
    if not layers:
        return type(self).forward(self, x, mask)
    pairs = [layer.prefixes() for layer in layers]
    prefix_key = torch.cat([p[0] for p in pairs], dim=0)
    prefix_value = torch.cat([p[1] for p in pairs], dim=0)
    return window_attention_with_prefix(self, x, mask, prefix_key, prefix_value)


class WindowPrefixForward:
    """The instance ``forward`` installed on a window attention (a plain object holding the host, so that the
    model still deep-copies and pickles with the override bound to the copy)."""

    def __init__(self, host: nn.Module) -> None:
        self.host = host

    def __call__(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return window_prefix_forward(self.host, x, mask)


class WindowPrefixLayer(MethodLayer):
    """Prefix keys/values for one window attention (timm Swin ``WindowAttention``, Video Swin
    ``WindowAttention3D`` or any module duck-typed like them).

    ``softmax((q s) [P_k ; K]^T + [0 | B_rel] + [0 | M]) [P_v ; V]``, prefixes shared by all windows, without
    relative position bias or shift mask on the prefix columns.

    Upstream (crashing, fixed here): bruceyo/V-PETL@661198dd38:models/video_swin_transformer_patt.py:WindowAttention3D
    (``--att_prefix_mode prefix_kv``); reparametrisation as
    jxhe/unify-parameter-efficient-tuning@5262470:petl/petl_factory.py:Prefix (one MLP per layer here, output 2C).
    """

    def __init__(self, host: nn.Module, config: WindowPrefixConfig) -> None:
        super().__init__()
        attn_dim = host.qkv.out_features // 3
        self.num_tokens = config.num_tokens
        self.attn_dim = attn_dim
        self.reparam = config.reparam
        if config.reparam:
            self.embedding = nn.Embedding(config.num_tokens, attn_dim)
            self.mlp = nn.Sequential(nn.Linear(attn_dim, config.mid_dim), nn.Tanh(),
                                     nn.Linear(config.mid_dim, 2 * attn_dim))
        else:
            self.prefix_key = nn.Parameter(torch.empty(config.num_tokens, attn_dim))
            self.prefix_value = nn.Parameter(torch.empty(config.num_tokens, attn_dim))
            with torch.no_grad():
                nn.init.normal_(self.prefix_key, std=config.init_std)
                nn.init.normal_(self.prefix_value, std=config.init_std)

    def prefixes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(P_k, P_v)``, each ``(L, attn_dim)``."""
        if self.reparam:
            kv = self.mlp(self.embedding.weight)
            return kv[:, : self.attn_dim], kv[:, self.attn_dim :]
        return self.prefix_key, self.prefix_value

    def attach(self, host: nn.Module) -> None:
        own = host.__dict__.get("forward")
        if own is None:
            host.forward = WindowPrefixForward(host)
        elif not isinstance(own, WindowPrefixForward):
            raise TargetError(f"{type(host).__name__} already has an instance-level forward; cannot add prefixes")

    def detach(self, host: nn.Module) -> None:
        petl = host._modules.get(PETL_ATTR)
        others = [m for m in (petl.values() if petl is not None else []) if
                  isinstance(m, WindowPrefixLayer) and m is not self]
        own = host.__dict__.get("forward")
        if not others and isinstance(own, WindowPrefixForward):
            del host.forward
