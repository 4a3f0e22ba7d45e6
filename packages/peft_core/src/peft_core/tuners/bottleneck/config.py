"""Bottleneck adapter configuration (Houlsby, Pfeiffer, parallel, scaled parallel / AdaptFormer)."""

from __future__ import annotations

from dataclasses import dataclass

from peft_core.config import PetlConfig, check_choice, check_positive, check_probability
from peft_core.tuners.activations import ACTIVATIONS

PLACEMENTS = ("houlsby", "pfeiffer", "parallel", "scaled_parallel", "custom")
MODES = ("serial", "parallel")
INITS = ("bert", "zero_up", "lora")
LAYER_NORMS = ("none", "in", "out")


@dataclass
class BottleneckConfig(PetlConfig):
    """A bottleneck adapter ``f(z) = s * W_up(act(W_down(LN?(z))))`` attached to each target module.

    * ``mode="serial"`` (Houlsby, Pfeiffer): ``out' = out + f(out)`` (or ``f(out)`` without ``residual``).
    * ``mode="parallel"`` (He et al.; AdaptFormer with ``scale=0.1``): ``out' = out + f(x)``, x the module input.

    ``placement`` picks default targets per architecture: ``houlsby`` = after the attention output projection and
    after the FFN output; ``pfeiffer`` = after the FFN output only; ``parallel``/``scaled_parallel`` = beside the FFN
    (AdaptFormer: ``mlp`` of ViT/Swin blocks). ``custom`` needs ``target_modules``.

    Attributes:
        bottleneck_dim: hidden size r of the adapter (``reduction_factor`` instead gives r = d // factor).
        init: ``bert`` = all weights N(0, 0.02), zero biases (Houlsby; pi-Tuning); ``zero_up`` = down N(0, 0.02),
            up and biases zero (identity at init); ``lora`` = down kaiming-uniform, up and biases zero (AdaptFormer /
            V-PETL ``init_option='lora'``).
        layer_norm: ``in`` applies a LayerNorm before the down projection, ``out`` after the up projection (V-PETL
            ``adapter_layernorm_option``), ``none`` for neither.
        learnable_scale: make ``s`` a trainable scalar initialised at ``scale``
            (V-PETL ``adapter_scalar='learnable'``).
    """

    method = "bottleneck"

    placement: str = "houlsby"
    mode: str | None = None
    bottleneck_dim: int | None = 64
    reduction_factor: int | None = None
    activation: str = "relu"
    init: str = "bert"
    scale: float = 1.0
    learnable_scale: bool = False
    layer_norm: str = "none"
    dropout: float = 0.0
    residual: bool = True

    def validate(self) -> None:
        super().validate()
        check_choice("placement", self.placement, PLACEMENTS)
        if self.mode is not None:
            check_choice("mode", self.mode, MODES)
        if (self.bottleneck_dim is None) == (self.reduction_factor is None):
            raise ValueError(
                f"bottleneck_dim={self.bottleneck_dim!r}, reduction_factor={self.reduction_factor!r}: "
                "expected exactly one of them to be set"
            )
        if self.bottleneck_dim is not None:
            check_positive("bottleneck_dim", self.bottleneck_dim)
        if self.reduction_factor is not None:
            check_positive("reduction_factor", self.reduction_factor)
        check_choice("activation", self.activation, ACTIVATIONS)
        check_choice("init", self.init, INITS)
        check_choice("layer_norm", self.layer_norm, LAYER_NORMS)
        check_probability("dropout", self.dropout)
        if self.placement == "custom" and self.target_modules is None:
            raise ValueError("placement='custom' is not allowed without target_modules; expected target_modules set")

    @property
    def resolved_mode(self) -> str:
        if self.mode is not None:
            return self.mode
        return "parallel" if self.placement in ("parallel", "scaled_parallel") else "serial"
