"""Where things are in the supported architectures: default targets per model family.

The families are detected from module class names, so a model from transformers, timm or plain torch is
recognised without importing those libraries. Each entry lists name suffixes (see :mod:`peft_core.targeting`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from peft_core.targeting import TargetError


@dataclass(frozen=True)
class ArchTargets:
    family: str
    query: list[str]
    key: list[str]
    value: list[str]
    attn_out: list[str]
    ffn_out: list[str]
    attention: list[str]
    fused_qkv: list[str] = field(default_factory=list)
    layer_norm_types: list[str] = field(default_factory=lambda: ["LayerNorm"])


_FAMILIES: dict[str, tuple[tuple[str, ...], ArchTargets]] = {
    "bert": (
        ("BertSelfAttention", "RobertaSelfAttention"),
        ArchTargets("bert", ["query"], ["key"], ["value"], ["attention.output.dense"], [r"layer\.\d+\.output\.dense"],
                    ["attention.self"]),
    ),
    "bart": (
        ("BartAttention",),
        ArchTargets("bart", ["q_proj"], ["k_proj"], ["v_proj"], ["self_attn.out_proj", "encoder_attn.out_proj"],
                    ["fc2"], ["self_attn", "encoder_attn"]),
    ),
    "t5": (
        ("T5Attention",),
        ArchTargets("t5", ["q"], ["k"], ["v"], ["SelfAttention.o", "EncDecAttention.o"], ["DenseReluDense.wo"],
                    ["SelfAttention", "EncDecAttention"], layer_norm_types=["T5LayerNorm", "LayerNorm"]),
    ),
    "clip": (
        ("CLIPAttention",),
        ArchTargets("clip", ["q_proj"], ["k_proj"], ["v_proj"], ["self_attn.out_proj"], ["mlp.fc2"], ["self_attn"]),
    ),
    "vit": (
        ("ViTAttention", "ViTSelfAttention"),
        ArchTargets("vit", ["q_proj", "query"], ["k_proj", "key"], ["v_proj", "value"],
                    ["attention.o_proj", "attention.output.dense"], ["mlp.fc2", r"layer\.\d+\.output\.dense"],
                    ["attention.attention", "attention"]),
    ),
    "swin": (
        ("WindowAttention", "WindowAttention3D"),
        ArchTargets("swin", [], [], [], ["attn.proj"], ["mlp.fc2"], ["attn"], fused_qkv=["attn.qkv"]),
    ),
    "timm_vit": (
        ("Attention",),
        ArchTargets("timm_vit", [], [], [], ["attn.proj"], ["mlp.fc2"], ["attn"], fused_qkv=["attn.qkv"]),
    ),
    "torch": (
        ("MultiheadAttention",),
        ArchTargets("torch", [], [], [], [], ["linear2"], ["self_attn", "multihead_attn"]),
    ),
}


def detect_family(model: nn.Module) -> ArchTargets:
    """The :class:`ArchTargets` of the first family whose attention class occurs in ``model``."""
    classes = {type(m).__name__ for m in model.modules()}
    for _, (markers, targets) in _FAMILIES.items():
        if any(m in classes for m in markers):
            return targets
    raise TargetError(
        "cannot infer default targets for this model (no known attention class among "
        f"{sorted(classes)[:12]}...); give target_modules explicitly"
    )


def family_names() -> list[str]:
    return list(_FAMILIES)
