"""PATT (parallel attention adapter, V-PETL) configuration."""

from __future__ import annotations

from dataclasses import dataclass

from peft_core.config import PetlConfig, check_choice, check_positive

MODES = ("patt_kv", "patt_qv", "patt_qk", "patt_qkv")
INITS = ("zero_up", "upstream")


@dataclass
class PattConfig(PetlConfig):
    """Parallel attention adapter: ``ad = W_up tanh(W_down x)`` split into one slice per adapted projection, each
    added as ``s * slice`` to the query, key and/or value of every targeted attention.

    Attributes:
        mode: which projections are adapted, ``patt_kv`` (the V-PETL proposal), ``patt_qv``, ``patt_qk`` or
            ``patt_qkv``. The up projection's output is ``[dQ? | dK? | dV?]`` in q, k, v order over the chosen ones
            (V-PETL ``--att_prefix_mode``).
        mid_dim: hidden size m of the shared down projection (V-PETL ``--att_mid_dim``, default 64).
        scale: s, the factor on the adapter output (V-PETL ``--att_prefix_scale``, default 0.2; README recipe 0.8).
        init: ``zero_up`` = default ``nn.Linear`` init for the down projection, up weight and bias zero (the model
            is unchanged at init); ``upstream`` = default ``nn.Linear`` init for both (as V-PETL, whose
            ``init_weights`` is never called: K and V are perturbed at init).
        bias: biases on both adapter Linears (V-PETL: ``bias=qkv_bias``, True for Video Swin).
        target_modules: attention modules (the hosts). ``None`` selects every module that owns a fused ``qkv``
            Linear or a ``query/key/value``, ``q_proj/k_proj/v_proj`` or ``q/k/v`` Linear triple.
    """

    method = "patt"

    mode: str = "patt_kv"
    mid_dim: int = 64
    scale: float = 0.2
    init: str = "zero_up"
    bias: bool = True

    def validate(self) -> None:
        super().validate()
        check_choice("mode", self.mode, MODES)
        if isinstance(self.mid_dim, bool) or not isinstance(self.mid_dim, int):
            raise ValueError(f"mid_dim={self.mid_dim!r} is not allowed; expected an integer > 0")
        check_positive("mid_dim", self.mid_dim)
        if isinstance(self.scale, bool) or not isinstance(self.scale, int | float):
            raise ValueError(f"scale={self.scale!r} is not allowed; expected a number > 0")
        check_positive("scale", self.scale)
        check_choice("init", self.init, INITS)
        if not isinstance(self.bias, bool):
            raise ValueError(f"bias={self.bias!r} is not allowed; expected one of [True, False]")

    @property
    def slices(self) -> str:
        """The adapted projections in output order, e.g. ``"kv"``."""
        return self.mode.removeprefix("patt_")
