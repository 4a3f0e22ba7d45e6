"""Input prompt tuning configuration (trainable embeddings prepended to the text input)."""

from __future__ import annotations

from dataclasses import dataclass

from peft_core.config import PetlConfig, check_choice, check_positive

REPARAMETERIZATIONS = ("none", "mlp")
ACTIVATIONS = ("tanh", "relu")
INITS = ("normal", "vocab")
POSITIONS = ("shift", "none")


@dataclass
class PromptConfig(PetlConfig):
    """``L`` trainable embeddings prepended to the input embeddings of a text encoder (Lester et al. 2021).

    Attributes:
        num_virtual_tokens: prompt length ``L``.
        reparameterization: ``none`` = direct ``(L, d)`` parameters; ``mlp`` = ``Embedding(L, d) -> Linear(d, mlp_dim)
            -> act -> Linear(mlp_dim, d)`` (VL-Adapter's prompt tuning: mid 800, tanh).
        mlp_dim: hidden width of the MLP.
        activation: ``tanh`` (VL-Adapter) or ``relu``.
        init: ``normal`` = N(0, 1) (``nn.Embedding``'s default, VL-Adapter and Hugging Face PEFT random init);
            ``vocab`` = the embeddings of ``L`` token ids drawn uniformly from the vocabulary (Lester et al.;
            ``reparameterization='none'`` only).
        positions: ``shift`` = the prompts take absolute positions ``0..L-1`` and the text ``L..L+S-1`` (what the
            model does with longer ``inputs_embeds``; Hugging Face PEFT); ``none`` = the prompts get no absolute
            position embedding and the text keeps ``0..S-1`` (VL-BART adds the prompts after the positional
            embeddings). Models with relative positions only (T5) are the same under both.
    """

    method = "prompt"

    num_virtual_tokens: int = 20
    reparameterization: str = "none"
    mlp_dim: int = 800
    activation: str = "tanh"
    init: str = "normal"
    positions: str = "shift"

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.num_virtual_tokens, int) or isinstance(self.num_virtual_tokens, bool):
            raise ValueError(f"num_virtual_tokens={self.num_virtual_tokens!r} is not allowed; expected an integer > 0")
        check_positive("num_virtual_tokens", self.num_virtual_tokens)
        check_choice("reparameterization", self.reparameterization, REPARAMETERIZATIONS)
        check_positive("mlp_dim", self.mlp_dim)
        check_choice("activation", self.activation, ACTIVATIONS)
        check_choice("init", self.init, INITS)
        check_choice("positions", self.positions, POSITIONS)
        if self.init == "vocab" and self.reparameterization != "none":
            raise ValueError(f"init='vocab' is not allowed with reparameterization={self.reparameterization!r}; "
                             "expected reparameterization='none'")
