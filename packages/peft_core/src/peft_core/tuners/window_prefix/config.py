"""Prefix tuning on windowed (Swin) attention: configuration."""

from __future__ import annotations

from dataclasses import dataclass

from peft_core.config import PetlConfig, check_positive


def _check_int(field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field}={value!r} is not allowed; expected an integer > 0")
    check_positive(field, value)


@dataclass
class WindowPrefixConfig(PetlConfig):
    """L learnable prefix keys and values prepended to the keys and values of every window of a windowed attention.

    Attributes:
        num_tokens: L, prefix tokens per attention layer (V-PETL ``--att_preseqlen``, default 16).
        reparam: ``False``: the prefix keys and values are parameters (L x d each), initialised N(0, init_std).
            ``True``: they are produced by an MLP ``Embedding(L, d) -> Linear(d, mid_dim) -> Tanh ->
            Linear(mid_dim, 2d)`` per layer (jxhe petl_factory ``Prefix``; default PyTorch inits), output
            ``[keys | values]``.
        mid_dim: hidden size of the reparametrisation MLP (V-PETL ``--att_mid_dim`` default 64).
        init_std: standard deviation of the direct prefix parameters.
        target_modules: windowed attention modules; ``None`` selects every module duck-typed as a Swin window
            attention (``qkv``, ``proj``, ``num_heads``, ``scale`` and a relative position bias).
    """

    method = "window_prefix"

    num_tokens: int = 16
    reparam: bool = False
    mid_dim: int = 64
    init_std: float = 0.02

    def validate(self) -> None:
        super().validate()
        _check_int("num_tokens", self.num_tokens)
        if not isinstance(self.reparam, bool):
            raise ValueError(f"reparam={self.reparam!r} is not allowed; expected one of [True, False]")
        _check_int("mid_dim", self.mid_dim)
        if isinstance(self.init_std, bool) or not isinstance(self.init_std, int | float):
            raise ValueError(f"init_std={self.init_std!r} is not allowed; expected a number > 0")
        check_positive("init_std", self.init_std)
