"""BitFit and LayerNorm-tuning configurations."""

from __future__ import annotations

from dataclasses import dataclass

from peft_core.config import PetlConfig, check_choice

RULES = ("all", "ofa", "custom")


@dataclass
class BitFitConfig(PetlConfig):
    """Train the biases of the selected modules (Ben Zaken et al. 2022).

    ``rule`` selects the modules: ``all`` = every module with a bias; ``ofa`` = the pi-Tuning / OFA rule
    (``--bitfit``: biases of modules whose name contains ``layer_norm`` or ``fc``, i.e. LayerNorm biases and FFN
    fc1/fc2 biases; not attention biases); ``custom`` = ``target_modules``.
    ``add_missing``: give modules without a bias a zero-initialised one: Linear layers (T5's) and RMS norms
    (``T5LayerNorm`` / ``RMSNorm``: ``y = g * x / rms(x) + b``, as LST's ``--use_bitfit`` on VL-T5).
    """

    method = "bitfit"

    rule: str = "all"
    add_missing: bool = False

    def validate(self) -> None:
        super().validate()
        check_choice("rule", self.rule, RULES)
        if self.rule == "custom" and self.target_modules is None:
            raise ValueError("rule='custom' is not allowed without target_modules; expected target_modules set")


@dataclass
class LayerNormTuningConfig(PetlConfig):
    """Train the gain and bias of the selected normalisation layers (LayerNorm, T5 / RMS norms).

    ``target_modules`` defaults to every LayerNorm-like module; ``bias`` False trains the gains only.
    """

    method = "layernorm"

    bias: bool = True
