"""VL-PET configuration (granularity-controlled gates, multi-head down adapter, value parallel adapter)."""

from __future__ import annotations

from dataclasses import dataclass, field

from peft_core.config import PetlConfig, check_choice, check_positive

GRANULARITIES = ("large", "middleX", "middleY", "small", "none")
ADAPTER_KINDS = ("multihead", "bottleneck", "compacter", "none")
VPA_KINDS = ("linear", "compacter")
SUBLAYERS = ("attn", "ffn")
INITS = ("bert", "torch")
SMALL_GATE_MEANS = ("masked", "upstream")
MIDDLE_Y_GATES = ("one_plus", "sigmoid")


@dataclass
class VlpetConfig(PetlConfig):
    """VL-PET (Hu et al., ICCV 2023): a granularity-controlled gate ``G`` on the output of every encoder self-attention
    and FFN sublayer, a lightweight adapter inside the gate, and a value parallel adapter (VPA) in every decoder
    cross-attention.

    Encoder sublayer with input ``X`` and frozen output ``H`` (HenryHZY/VL-PET ``my_transformers/modeling_bart.py``
    ``BartEncoderLayer``, ``modeling_t5.py`` ``T5LayerSelfAttention`` / ``T5LayerFF``)::

        H' = H + up(gelu_new(cat_h down_h(H)))                 adapter_kind="multihead" (N_h = num_heads)
        BART (post-LN): LN(X + Dropout(s * G * H'))      T5 (pre-LN): X + Dropout(s * G * H')

    Decoder cross-attention value (VPA): ``V = v_proj(E) + up(gelu_new(down(E)))``, E the encoder output.

    Attributes:
        granularity: ``large`` G = sigmoid(up_g(gelu_new(down_g(X)))) (B, L, d); ``middleX`` G = sigmoid(Linear(d, 1)
            (X + H')) (B, L, 1); ``middleY`` G = 1 + z, z in R^d (upstream has no sigmoid, see ``middle_y_gate``);
            ``small`` G = mean over tokens of sigmoid(Linear(2d, 1)([X; H'])) (B, 1, 1); ``none`` G = 1.
        adapter_kind: ``multihead`` (VL-PET: N_h Linear(d, r/N_h) concatenated -> gelu_new -> Linear(r, d));
            ``bottleneck`` (VL-Adapter: Linear(d, r) -> gelu_new -> Linear(r, d), the "VL-Adapter + G_large"
            variant of paper Table 9); ``compacter`` (PHM layers: PHM(d, r) -> gelu_new -> PHM(r, d), with
            ``phm_division`` Kronecker summands, a rule per layer, unfactorised blocks, the "Compacter + G_large"
            variant of Table 9); ``none`` (H' = H, gate only).
        r: adapter bottleneck size. num_heads: N_h of the multi-head down projection (``r % num_heads == 0``).
        gate_dim: r_g, the hidden size of the ``large`` gate.
        scaling: s (upstream ``encoder_gating_scaling_factor``: BART scripts 1.0, T5 scripts 0.3).
        where: which encoder sublayers get the gate and adapter: a subset of ``["attn", "ffn"]``.
        init: ``bert`` = every new Linear N(0, 0.02), zero bias (BART ``_init_weights``); ``torch`` = PyTorch's default
            Linear init (upstream T5: ``T5PreTrainedModel._init_weights`` leaves generic Linears alone). The middleY
            vector z is N(0, 0.02) in both.
        adapter_up_zero_init: zero the adapter's up projection (``--use_encoder_multihead_up_zero_init``): H' = H.
        gate_zero_init: zero the gate's last layer: large up_g (``--use_encoder_gating_large_x_lowrank_up_zero_init``,
            G = 0.5), small / middleX Linear (``..._small_up_zero_init`` / ``..._middle_up_zero_init``, G = 0.5),
            middleY z (``--use_encoder_gating_middle_ia3_zero_init``, G = 1).
        vpa_dim: hidden size of the decoder value parallel adapter; ``None`` for no VPA.
        vpa_up_zero_init: zero the VPA's up projection (``--use_decoder_enc_vpa_up_zero_init``): identity.
        vpa_kind: ``linear`` (Linear down / up) or ``compacter`` (PHM down / up; upstream builds the VPA from the
            adapter config, so with ``--use_compacter`` the VPA is a PHM adapter too).
        phm_division: n, the number of Kronecker summands of the PHM layers (``compacter`` kinds; VL-Adapter's
            Compacter uses 2); must divide d, r and ``vpa_dim``.
        small_gate_mean: ``masked`` averages the small gate over valid (non-padding) tokens only, with the padding read
            from the encoder layer's ``attention_mask``; ``upstream`` averages over all positions, padding included
            (upstream behaviour, a bug: the gate of a sequence depends on how much padding its batch has).
        middle_y_gate: ``one_plus`` G = 1 + z (upstream code, ``y + y * z``); ``sigmoid`` G = sigmoid(z) (the gate the
            paper's figure draws).
        encoder_layer_norms: also train every normalisation layer of the encoder (``--unfreeze_encoder_layer_norms``;
            decoder norms stay frozen), as zero-initialised gain/bias deltas owned by this adapter.
    """

    method = "vlpet"

    granularity: str = "large"
    adapter_kind: str = "multihead"
    r: int = 96
    num_heads: int = 4
    gate_dim: int = 96
    scaling: float = 1.0
    where: list[str] = field(default_factory=lambda: ["attn", "ffn"])
    init: str = "bert"
    adapter_up_zero_init: bool = False
    gate_zero_init: bool = False
    vpa_dim: int | None = 96
    vpa_up_zero_init: bool = False
    vpa_kind: str = "linear"
    phm_division: int = 2
    small_gate_mean: str = "masked"
    middle_y_gate: str = "one_plus"
    encoder_layer_norms: bool = False

    def validate(self) -> None:
        super().validate()
        if self.target_types is not None:
            raise ValueError(
                f"target_types={self.target_types!r} is not allowed for vlpet; expected None (the hosts are found "
                "from the encoder/decoder layer structure; target_modules selects encoder layers)"
            )
        check_choice("granularity", self.granularity, GRANULARITIES)
        check_choice("adapter_kind", self.adapter_kind, ADAPTER_KINDS)
        check_choice("init", self.init, INITS)
        check_choice("small_gate_mean", self.small_gate_mean, SMALL_GATE_MEANS)
        check_choice("middle_y_gate", self.middle_y_gate, MIDDLE_Y_GATES)
        check_choice("vpa_kind", self.vpa_kind, VPA_KINDS)
        for name in ("r", "num_heads", "gate_dim", "phm_division"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name}={value!r} is not allowed; expected a positive integer")
            check_positive(name, value)
        if self.adapter_kind == "multihead" and self.r % self.num_heads:
            raise ValueError(
                f"r={self.r!r} is not allowed with num_heads={self.num_heads!r}; expected r divisible by num_heads"
            )
        if self.adapter_kind == "compacter" and self.r % self.phm_division:
            raise ValueError(
                f"r={self.r!r} is not allowed with phm_division={self.phm_division!r}; expected r divisible by it"
            )
        if self.vpa_kind == "compacter" and self.vpa_dim is not None and self.vpa_dim % self.phm_division:
            raise ValueError(f"vpa_dim={self.vpa_dim!r} is not allowed with phm_division={self.phm_division!r}; "
                             "expected vpa_dim divisible by it")
        if not isinstance(self.scaling, int | float) or isinstance(self.scaling, bool):
            raise ValueError(f"scaling={self.scaling!r} is not allowed; expected a number")
        if not isinstance(self.where, list | tuple) or len(set(self.where)) != len(self.where):
            raise ValueError(f"where={self.where!r} is not allowed; expected a list of distinct items of {SUBLAYERS}")
        for item in self.where:
            check_choice("where", item, SUBLAYERS)
        self.where = list(self.where)
        if self.vpa_dim is not None:
            if not isinstance(self.vpa_dim, int) or isinstance(self.vpa_dim, bool):
                raise ValueError(f"vpa_dim={self.vpa_dim!r} is not allowed; expected a positive integer or None")
            check_positive("vpa_dim", self.vpa_dim)
        for name in ("adapter_up_zero_init", "gate_zero_init", "vpa_up_zero_init", "encoder_layer_norms"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} is not allowed; expected true or false")
        if not self.where and self.vpa_dim is None and not self.encoder_layer_norms:
            raise ValueError("where=[] is not allowed with vpa_dim=None and encoder_layer_norms=False; "
                             "expected at least one of them to add parameters")
