"""Compacter configuration (hypercomplex / PHM bottleneck adapters)."""

from __future__ import annotations

from dataclasses import dataclass

from peft_core.config import PetlConfig, check_choice, check_positive
from peft_core.tuners.activations import ACTIVATIONS

PLACEMENTS = ("houlsby", "pfeiffer", "custom")
W_INITS = ("glorot-uniform", "glorot-normal", "normal")
C_INITS = ("normal", "uniform")


@dataclass
class CompacterConfig(PetlConfig):
    """A serial bottleneck adapter whose two projections are PHM layers (Karimi Mahabadi et al. 2021)::

        out' = out + up(act(down(out))),   down / up:  y = x H + b,   H = sum_{i=1..n} A_i kron B_i

    ``placement`` picks default targets per architecture: ``houlsby`` = after every attention output projection
    (self and cross) and after every FFN output (VL-Adapter; Compacter), ``pfeiffer`` = after the FFN output only
    (Compacter++), ``custom`` needs ``target_modules``.

    Attributes:
        reduction_factor: bottleneck size ``h = d // reduction_factor`` (``bottleneck_dim`` instead gives ``h``).
        hypercomplex_division: ``n``, the number of Kronecker summands; ``d`` and ``h`` must be divisible by it.
        shared_phm_rule: one set of rule matrices ``A`` (``n x n x n``) for every PHM layer of the adapter (stored
            once, on the model root); ``False`` gives every PHM layer its own rule.
        factorized_phm: ``B_i = W_left_i W_right_i`` with rank ``phm_rank``; ``False`` learns ``B_i`` in full.
        w_init: init of ``B`` (upstream ``hypercomplex_nonlinearity``): ``glorot-uniform`` / ``glorot-normal``
            (Xavier with gain sqrt(2), per ``i``) or ``normal`` (N(0, phm_init_range)).
        c_init: init of the rules ``A`` (upstream ``phm_c_init``): per-layer rules ``normal`` N(0, 0.01) /
            ``uniform`` U(-0.01, 0.01); the shared rule ``normal`` N(0, phm_init_range) / ``uniform`` U(-1, 1)
            (upstream initialises the two cases differently; kept as is).
        activation: between the projections (upstream ``non_linearity``, ``gelu_new``).
        bias: learn ``b`` in both PHM layers (zero-initialised).
    """

    method = "compacter"

    placement: str = "houlsby"
    reduction_factor: int | None = 8
    bottleneck_dim: int | None = None
    hypercomplex_division: int = 2
    shared_phm_rule: bool = False
    factorized_phm: bool = False
    phm_rank: int = 1
    w_init: str = "glorot-uniform"
    c_init: str = "normal"
    phm_init_range: float = 0.01
    activation: str = "gelu_new"
    bias: bool = True

    def validate(self) -> None:
        super().validate()
        check_choice("placement", self.placement, PLACEMENTS)
        if (self.bottleneck_dim is None) == (self.reduction_factor is None):
            raise ValueError(
                f"bottleneck_dim={self.bottleneck_dim!r}, reduction_factor={self.reduction_factor!r}: "
                "expected exactly one of them to be set"
            )
        for name in ("bottleneck_dim", "reduction_factor"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}={value!r} is not allowed; expected an integer >= 1")
        for name in ("hypercomplex_division", "phm_rank"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} is not allowed; expected an integer >= 1")
        for name in ("shared_phm_rule", "factorized_phm", "bias"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} is not allowed; expected True or False")
        check_choice("w_init", self.w_init, W_INITS)
        check_choice("c_init", self.c_init, C_INITS)
        check_positive("phm_init_range", self.phm_init_range)
        check_choice("activation", self.activation, ACTIVATIONS)
        if self.placement == "custom" and self.target_modules is None:
            raise ValueError("placement='custom' is not allowed without target_modules; expected target_modules set")

    def hidden_size(self, dim: int) -> int:
        """Bottleneck size for a host of width ``dim``."""
        return self.bottleneck_dim if self.bottleneck_dim is not None else max(1, dim // int(self.reduction_factor))
