"""Ladder Side Tuning (LST) configuration."""

from __future__ import annotations

from dataclasses import dataclass

from peft_core.config import PetlConfig, check_choice, check_positive

INITS = ("magnitude", "random")


def _check_layers(field: str, value: object) -> None:
    if value is None:
        return
    if (not isinstance(value, list) or not value or len(set(value)) != len(value)
            or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value)):
        raise ValueError(f"{field}={value!r} is not allowed; expected None (every layer) or a non-empty list of "
                         "distinct layer indices >= 0")


@dataclass
class LSTConfig(PetlConfig):
    """A ladder side network beside a frozen transformers encoder (and decoder), Sung et al. 2022.

    Per backbone stack (T5 encoder / decoder, BERT / RoBERTa encoder) with width ``d`` and side width ``d / r``::

        s = first_downsample(h_emb)                                     h_emb: input of backbone block 0
        for each side layer i (layer dropping: only i in side_layers):
            mu = sigmoid(alpha_i / T)
            s  = mu * s + (1 - mu) * downsample_i(h_i)                   h_i: output of backbone block i
            s  = side_block_i(s)                                         the backbone's block class, config / r
        s = final_norm(s)                      (d / r)
        decoder (or encoder-only model) output  <-  upsample(s)          Linear(d / r -> d), fed to the frozen head

    In an encoder-decoder the side decoder's cross-attention reads the side encoder output; the backbone decoder
    still reads the backbone encoder output (upstream ``modeling_side_t5.py``).

    Attributes:
        reduction_factor: ``r``; side ``d_model``, ``d_ff`` and ``d_kv`` (T5) / ``hidden_size`` and
            ``intermediate_size`` (BERT) are divided by it, the number of heads is kept.
        side_layers: backbone layer indices that get a side block (layer dropping); ``None`` = all.
        decoder_side_layers: the same for the decoder; ``None`` = ``side_layers`` (upstream scripts pass one list).
        gate_alpha, gate_T: the ladder gate ``mu = sigmoid(alpha / T)``, ``alpha`` initialised to ``gate_alpha``.
        bias_sampling: biases in the down/up samplers (upstream ``add_bias_sampling``).
        init: ``magnitude`` = side blocks pruned from the backbone blocks keeping the L1-largest rows / columns
            (Fisher importance: :func:`~peft_core.tuners.lst.model.apply_fisher_init` after ``add_adapter``);
            ``random`` = the block class's own initialisation.
        target_modules: optional names of the backbone stacks to use (default: every supported stack found).
    """

    method = "lst"

    reduction_factor: int = 8
    side_layers: list[int] | None = None
    decoder_side_layers: list[int] | None = None
    gate_alpha: float = 0.0
    gate_T: float = 0.1
    bias_sampling: bool = True
    init: str = "magnitude"

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.reduction_factor, int) or isinstance(self.reduction_factor, bool) \
                or self.reduction_factor < 1:
            raise ValueError(f"reduction_factor={self.reduction_factor!r} is not allowed; expected an integer >= 1")
        _check_layers("side_layers", self.side_layers)
        _check_layers("decoder_side_layers", self.decoder_side_layers)
        if not isinstance(self.gate_alpha, int | float) or isinstance(self.gate_alpha, bool):
            raise ValueError(f"gate_alpha={self.gate_alpha!r} is not allowed; expected a number")
        check_positive("gate_T", self.gate_T)
        if not isinstance(self.bias_sampling, bool):
            raise ValueError(f"bias_sampling={self.bias_sampling!r} is not allowed; expected True or False")
        check_choice("init", self.init, INITS)

    def layers_for(self, is_decoder: bool, num_layers: int) -> list[int]:
        """Side layer indices of a stack with ``num_layers`` blocks."""
        chosen = self.decoder_side_layers if is_decoder and self.decoder_side_layers is not None else self.side_layers
        return list(range(num_layers)) if chosen is None else sorted(chosen)
