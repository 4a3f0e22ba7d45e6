"""Conditional mixture-of-experts configuration (Uni-Perceiver-MoE)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from peft_core.config import PetlConfig, check_choice, check_positive

ROUTINGS = ("attribute", "token")
LAYER_CHOICES = ("odd", "four", "all")
EXPERT_TYPES = ("FFN", "SA")
NOISE_POLICIES = ("vmoe", "rsample", "none")
TOP1_GATES = ("straight_through", "softmax")


@dataclass
class MoeConfig(PetlConfig):
    """Conditional MoE: the targeted ``nn.Linear`` layers become ``E`` experts initialised from the pretrained weight.

    Routing:

    * ``attribute`` (released Uni-Perceiver code): one decision per input *segment*, computed from a per-segment
      attribute vector (length ``attribute_length``) supplied per forward with :func:`moe_routing` (or
      ``default_attributes`` for a single segment); the ``k`` chosen experts are merged into one weight.
    * ``token`` (paper only): one decision per token from the token's features, with a Switch/GShard
      load-balancing auxiliary loss collected by :func:`moe_aux_loss`.

    Attributes:
        num_experts: E. top_k: experts per decision (1 <= k <= E; upstream supports 1 and 2).
        layers: ``"odd"`` = layers with ``layer_idx % 2 == 0`` (upstream ``MOE_EXPERT_LOCATION='odd'``), ``"four"`` =
            ``layer_idx % 4 == 0``, ``"all"``, or a list of layer indices. The index is read from the host name with
            ``layer_regex`` (default per architecture, e.g. ``layer.(\\d+).`` for BERT).
        expert_types: ``"SA"`` = the attention q/k/v (or fused qkv) and output projections, ``"FFN"`` = the two FFN
            Linears (upstream ``MOE_EXPERT_TYPE='FFN,SA'``). Ignored when ``target_modules`` is given.
        attribute_length: length of an attribute vector (upstream ``ATTRIBUTE_LENGTH`` = 8).
        tag_transform_act: GELU between the tag Linear and its LayerNorm (upstream ``TAG_Transform_ACT``).
        gate_dim: width of the tag embedding seen by the attribute gate. ``None`` = ``min(in, out)`` of the host that
            owns the gate, which is the model width ``d`` for qkv / out / FFN Linears (upstream: ``d_model``).
        noise_policy: training-time logit noise. ``vmoe`` (upstream setting): ``logits + N(0, (noise_std / E)^2)``,
            top-k and softmax on the noisy logits; ``rsample``: ``logits + noise_std * Gumbel(0, 1)`` for the top-k,
            softmax on the clean logits; ``none``. Never applied in eval mode.
        top1_gate: gate value for ``top_k == 1`` (upstream returns ``None`` there). ``straight_through``: the gate
            is renormalised over the selected expert as for ``k > 1``, i.e. exactly 1 in value (experts copied from
            the pretrained weight reproduce it), while the router still gets a gradient through
            ``p / stopgrad(p)``; ``softmax``: the raw softmax probability of the chosen expert (what upstream's
            ``top2gating`` and ``top1gating`` compute).
        ffn_share_gate_decision: the second FFN Linear reuses the first one's decision (upstream
            ``FFN_SHARE_GATE_DECISION``, True in the released configs); otherwise it has its own gate.
        share_attention_gate: q/k/v (or fused qkv) and the attention output projection of one layer use one decision
            (upstream: ``dense`` always reuses ``qkv_proj``'s decision). False gives every Linear its own gate.
        default_attributes: attribute vector used (as one segment) when no :func:`moe_routing` context is active.
        seq_dim: token axis of the host inputs, along which segments are split (1 for batch-first models).
        layer_regex: regular expression whose first group is the layer index, searched in the host name.
    """

    method = "moe"

    num_experts: int = 8
    top_k: int = 2
    routing: str = "attribute"
    layers: str | list[int] = "odd"
    expert_types: list[str] = field(default_factory=lambda: ["FFN", "SA"])
    attribute_length: int = 8
    tag_transform_act: bool = False
    gate_dim: int | None = None
    noise_policy: str = "vmoe"
    noise_std: float = 1.0
    top1_gate: str = "straight_through"
    ffn_share_gate_decision: bool = True
    share_attention_gate: bool = True
    default_attributes: list[float] | None = None
    seq_dim: int = 1
    layer_regex: str | None = None

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.num_experts, int) or self.num_experts < 1:
            raise ValueError(f"num_experts={self.num_experts!r} is not allowed; expected an integer >= 1")
        if not isinstance(self.top_k, int) or not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"top_k={self.top_k!r} is not allowed; expected an integer in [1, num_experts]")
        check_choice("routing", self.routing, ROUTINGS)
        if isinstance(self.layers, str):
            check_choice("layers", self.layers, LAYER_CHOICES)
        elif not (isinstance(self.layers, list) and self.layers
                  and all(isinstance(i, int) and i >= 0 for i in self.layers)):
            raise ValueError(f"layers={self.layers!r} is not allowed; expected one of {list(LAYER_CHOICES)} "
                             "or a non-empty list of layer indices >= 0")
        if not (isinstance(self.expert_types, list) and self.expert_types
                and all(t in EXPERT_TYPES for t in self.expert_types)):
            raise ValueError(f"expert_types={self.expert_types!r} is not allowed; expected a non-empty list of "
                             f"{list(EXPERT_TYPES)}")
        check_positive("attribute_length", self.attribute_length)
        if self.gate_dim is not None:
            check_positive("gate_dim", self.gate_dim)
        check_choice("noise_policy", self.noise_policy, NOISE_POLICIES)
        check_positive("noise_std", self.noise_std, allow_zero=True)
        check_choice("top1_gate", self.top1_gate, TOP1_GATES)
        if self.default_attributes is not None and (
            not isinstance(self.default_attributes, list) or len(self.default_attributes) != self.attribute_length
        ):
            raise ValueError(f"default_attributes={self.default_attributes!r} is not allowed; expected a list of "
                             f"attribute_length={self.attribute_length} numbers")
        if not isinstance(self.seq_dim, int):
            raise ValueError(f"seq_dim={self.seq_dim!r} is not allowed; expected an integer axis")
        if self.layer_regex is not None:
            try:
                pattern = re.compile(self.layer_regex)
            except re.error as exc:
                raise ValueError(
                    f"layer_regex={self.layer_regex!r} is not allowed; not a valid regex ({exc})") from None
            if pattern.groups < 1:
                raise ValueError(f"layer_regex={self.layer_regex!r} is not allowed; expected a regex with one group "
                                 "capturing the layer index")
