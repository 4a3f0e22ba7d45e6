"""Prefix tuning configuration (key/value prefixes per attention layer; Uni-Perceiver deep prompts)."""

from __future__ import annotations

from dataclasses import dataclass, field

from peft_core.config import PetlConfig, check_choice, check_positive, check_probability

SPACES = ("kv", "hidden")
REPARAMETERIZATIONS = ("none", "mlp")
ACTIVATIONS = ("tanh", "relu")
ATTENTION_KINDS = ("encoder_self", "decoder_self", "cross")


@dataclass
class PrefixConfig(PetlConfig):
    """``L`` trainable key/value positions prepended to every targeted attention (Li & Liang 2021).

    Attributes:
        num_virtual_tokens: prefix length ``L`` (per layer).
        space: ``kv`` = the prefix lives in key/value space (``P_k``, ``P_v`` per layer; prefix tuning, OFA);
            ``hidden`` = ``L`` hidden-space tokens per layer projected by the layer's frozen key and value
            projections (Uni-Perceiver deep prompts: ``K' = [W_k norm(P) + b_k ; K]``).
        reparameterization: ``none`` = direct parameters; ``mlp`` = ``Embedding(L, d) -> Linear(d, proj) -> act ->
            Linear(proj, 2 d)`` (``kv`` space only).
        proj_dim: hidden width of the MLP; ``None`` uses ``round(proj_factor * d)`` (``d`` = model width).
        proj_factor: see ``proj_dim`` (OFA: 2).
        activation: MLP activation, ``tanh`` (Li & Liang, Hugging Face PEFT) or ``relu`` (OFA / pi-Tuning).
        share_mlp: one MLP per stack of layers producing ``layers * 2 d`` (OFA's prompt encoder: one for the encoder,
            one for the decoder), instead of one MLP per layer. Stacks are the targets whose names are equal up to
            their layer indices (``model.encoder.layers.*.self_attn``).
        dropout: dropout on the prefix keys and values (per batch element; OFA 0.2).
        attentions: which attentions the default targets include: ``encoder_self``, ``decoder_self`` (causal or
            decoder-side self-attention), ``cross``. Ignored when ``target_modules`` / ``target_types`` are given.
        hidden_norm: ``hidden`` space only: the name of a normalisation module next to the attention (looked up in
            the attention's parent, then grand-parent, ...) applied to the prompts before the projections, as
            Uni-Perceiver's pre-LN layers apply ``norm1`` (``None``: no normalisation, for post-LN models).
    """

    method = "prefix"

    num_virtual_tokens: int = 20
    space: str = "kv"
    reparameterization: str = "none"
    proj_dim: int | None = None
    proj_factor: float = 1.0
    activation: str = "tanh"
    share_mlp: bool = False
    dropout: float = 0.0
    attentions: list[str] = field(default_factory=lambda: ["encoder_self", "decoder_self"])
    hidden_norm: str | None = None

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.num_virtual_tokens, int) or isinstance(self.num_virtual_tokens, bool):
            raise ValueError(f"num_virtual_tokens={self.num_virtual_tokens!r} is not allowed; expected an integer > 0")
        check_positive("num_virtual_tokens", self.num_virtual_tokens)
        check_choice("space", self.space, SPACES)
        check_choice("reparameterization", self.reparameterization, REPARAMETERIZATIONS)
        if self.proj_dim is not None:
            check_positive("proj_dim", self.proj_dim)
        check_positive("proj_factor", self.proj_factor)
        check_choice("activation", self.activation, ACTIVATIONS)
        check_probability("dropout", self.dropout)
        if not isinstance(self.attentions, list | tuple) or not self.attentions:
            raise ValueError(f"attentions={self.attentions!r} is not allowed; expected a non-empty list of "
                             f"{list(ATTENTION_KINDS)}")
        for kind in self.attentions:
            check_choice("attentions", kind, ATTENTION_KINDS)
        if len(set(self.attentions)) != len(self.attentions):
            raise ValueError(f"attentions={self.attentions!r} is not allowed; expected each kind at most once")
        if self.share_mlp and self.reparameterization != "mlp":
            raise ValueError("share_mlp=True is not allowed with reparameterization="
                             f"{self.reparameterization!r}; expected reparameterization='mlp'")
        if self.space == "hidden" and self.reparameterization != "none":
            raise ValueError(f"reparameterization={self.reparameterization!r} is not allowed with space='hidden'; "
                             "expected 'none'")
        if self.hidden_norm is not None and (self.space != "hidden" or not isinstance(self.hidden_norm, str)
                                             or not self.hidden_norm):
            raise ValueError(f"hidden_norm={self.hidden_norm!r} is not allowed with space={self.space!r}; expected "
                             "None, or a module name with space='hidden'")

    def mlp_width(self, model_width: int) -> int:
        """Hidden width of the reparameterisation MLP for a model of width ``model_width``."""
        return self.proj_dim if self.proj_dim is not None else max(1, round(self.proj_factor * model_width))
