"""LoRA configuration."""

from __future__ import annotations

from dataclasses import dataclass

from peft_core.config import PetlConfig, check_choice, check_positive, check_probability

INITS = ("default", "gaussian", "random")


@dataclass
class LoraConfig(PetlConfig):
    """Low-rank update ``W' = W + (alpha / r) B A`` on Linear, Conv2d, fused qkv projections and
    ``nn.MultiheadAttention``.

    Attributes:
        r: rank. alpha: scaling numerator (``scaling = alpha / r``). dropout: on the LoRA branch input.
        init: ``default`` = A kaiming-uniform, B zero (identity at init, Hu et al. 2021); ``gaussian`` = A N(0, 1/r),
            B zero; ``random`` = both random (non-identity; used to test merging).
        fused_slices: for a fused qkv Linear (timm, Swin: out = 3 * d) or ``nn.MultiheadAttention``'s in-projection,
            which of q, k, v get an update, e.g. ``"qv"``. ``None`` treats the projection as one Linear.
    """

    method = "lora"

    r: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    init: str = "default"
    fused_slices: str | None = None

    def validate(self) -> None:
        super().validate()
        check_positive("r", self.r)
        check_positive("alpha", self.alpha)
        check_probability("dropout", self.dropout)
        check_choice("init", self.init, INITS)
        if self.fused_slices is not None and (
            not self.fused_slices or set(self.fused_slices) - set("qkv") or len(set(self.fused_slices)) != len(
                self.fused_slices)
        ):
            raise ValueError(
                f"fused_slices={self.fused_slices!r} is not allowed; expected a subset of 'qkv' like 'qv'"
            )

    @property
    def scaling(self) -> float:
        return self.alpha / self.r
