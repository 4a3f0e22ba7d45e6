"""Conditional mixture of experts (Uni-Perceiver-MoE): attribute routing (released code) and token routing (paper)."""
from peft_core.tuners.moe.config import MoeConfig
from peft_core.tuners.moe.gate import AttributeGate, RoutingDecision, TokenGate, load_balancing_loss, top_k_gating
from peft_core.tuners.moe.layer import (
    GateGroup,
    MoeLayer,
    fused_experts_linear,
    merged_expert_weight,
    token_experts_linear,
)
from peft_core.tuners.moe.model import MoeTuner
from peft_core.tuners.moe.routing import (
    MoeRouting,
    make_routing,
    moe_aux_loss,
    moe_aux_losses,
    moe_routing,
    restore_moe_routing,
    set_moe_routing,
)

__all__ = [
    "AttributeGate",
    "GateGroup",
    "MoeConfig",
    "MoeLayer",
    "MoeRouting",
    "MoeTuner",
    "RoutingDecision",
    "TokenGate",
    "fused_experts_linear",
    "load_balancing_loss",
    "make_routing",
    "merged_expert_weight",
    "moe_aux_loss",
    "moe_aux_losses",
    "moe_routing",
    "restore_moe_routing",
    "set_moe_routing",
    "token_experts_linear",
    "top_k_gating",
]
