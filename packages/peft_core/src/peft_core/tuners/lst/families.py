"""Where LST finds the backbone stacks, how it reduces their config, and how each block parameter is pruned.

A *stack* is a module holding a ``ModuleList`` of transformer blocks (T5 ``T5Stack.block``, BERT / RoBERTa
``BertEncoder.layer``). Families are recognised by class name, as in :mod:`peft_core.archs`. Every parameter of a
block is matched (full match, first rule wins) to a tuple naming, per dimension, the index group it is pruned with:

* ``res``  - the residual (model) dimension ``d``, one index set shared by every side block of the model;
* ``attn`` / ``xattn`` - the inner dimension of the self- / cross-attention of one block (heads x head_dim; pruned
  per head so every head keeps ``head_dim / r`` dimensions);
* ``ffn``  - the hidden dimension of one block's feed-forward network;
* ``None`` - not reduced (T5 relative position buckets x heads).
"""

from __future__ import annotations

import copy
import inspect
import re
from dataclasses import dataclass
from typing import Any

from torch import nn

from peft_core.targeting import TargetError

Dims = tuple[str | None, ...]

T5_RULES: tuple[tuple[str, Dims], ...] = (
    (r"layer\.0\.SelfAttention\.[qkv]\.weight", ("attn", "res")),
    (r"layer\.0\.SelfAttention\.o\.weight", ("res", "attn")),
    (r"layer\.0\.SelfAttention\.relative_attention_bias\.weight", (None, None)),
    (r"layer\.1\.EncDecAttention\.[qkv]\.weight", ("xattn", "res")),
    (r"layer\.1\.EncDecAttention\.o\.weight", ("res", "xattn")),
    (r"layer\.\d+\.layer_norm\.weight", ("res",)),
    (r"layer\.\d+\.DenseReluDense\.wi(_0|_1)?\.weight", ("ffn", "res")),
    (r"layer\.\d+\.DenseReluDense\.wo\.weight", ("res", "ffn")),
)

BERT_RULES: tuple[tuple[str, Dims], ...] = (
    (r"attention\.self\.(query|key|value)\.weight", ("attn", "res")),
    (r"attention\.self\.(query|key|value)\.bias", ("attn",)),
    (r"attention\.output\.dense\.weight", ("res", "attn")),
    (r"attention\.output\.dense\.bias", ("res",)),
    (r"(attention\.output|output)\.LayerNorm\.(weight|bias)", ("res",)),
    (r"intermediate\.dense\.weight", ("ffn", "res")),
    (r"intermediate\.dense\.bias", ("ffn",)),
    (r"output\.dense\.weight", ("res", "ffn")),
    (r"output\.dense\.bias", ("res",)),
)


@dataclass(frozen=True)
class StackFamily:
    """How LST handles one kind of backbone stack (see the module docstring)."""

    name: str
    stack_classes: tuple[str, ...]
    blocks_attr: str
    hidden_attr: str
    ffn_attr: str
    heads_attr: str
    head_dim_attr: str | None  # None: hidden / heads
    dropout_attr: str
    eps_attr: str
    final_norm_attr: str | None
    rules: tuple[tuple[str, Dims], ...]
    supports_decoder: bool

    # ------------------------------------------------------------------------------------------------ sizes
    def hidden(self, config: Any) -> int:
        return int(getattr(config, self.hidden_attr))

    def heads(self, config: Any) -> int:
        return int(getattr(config, self.heads_attr))

    def head_dim(self, config: Any) -> int:
        if self.head_dim_attr is not None:
            return int(getattr(config, self.head_dim_attr))
        return self.hidden(config) // self.heads(config)

    def check(self, config: Any, r: int, what: str) -> None:
        """Raise :class:`TargetError` unless ``r`` divides every reduced size."""
        sizes = {self.hidden_attr: self.hidden(config), self.ffn_attr: int(getattr(config, self.ffn_attr)),
                 "head_dim": self.head_dim(config)}
        bad = {k: v for k, v in sizes.items() if v % r}
        if bad:
            raise TargetError(f"{what}: reduction_factor={r} must divide {bad} (sizes {sizes})")

    def side_config(self, config: Any, r: int) -> Any:
        """A copy of the stack's config with the widths divided by ``r`` (heads kept)."""
        side = copy.deepcopy(config)
        setattr(side, self.hidden_attr, self.hidden(config) // r)
        setattr(side, self.ffn_attr, int(getattr(config, self.ffn_attr)) // r)
        if self.head_dim_attr is not None:
            setattr(side, self.head_dim_attr, self.head_dim(config) // r)
        return side

    # ------------------------------------------------------------------------------------------------ modules
    def blocks(self, stack: nn.Module) -> nn.ModuleList:
        return getattr(stack, self.blocks_attr)

    def is_decoder(self, stack: nn.Module) -> bool:
        return bool(getattr(stack, "is_decoder", getattr(stack.config, "is_decoder", False)))

    def make_block(self, backbone_block: nn.Module, side_config: Any, index: int) -> nn.Module:
        """A new block of the backbone block's own class, built from ``side_config``."""
        cls = type(backbone_block)
        params = inspect.signature(cls.__init__).parameters
        kwargs: dict[str, Any] = {}
        if "has_relative_attention_bias" in params:
            kwargs["has_relative_attention_bias"] = any(
                getattr(m, "has_relative_attention_bias", False) for m in backbone_block.modules())
        if "layer_idx" in params:
            kwargs["layer_idx"] = index
        return cls(side_config, **kwargs)

    def make_final_norm(self, stack: nn.Module, config: Any, width: int) -> nn.Module:
        """The side's final norm: the class of the stack's final norm if it has one (T5LayerNorm), else LayerNorm."""
        eps = float(getattr(config, self.eps_attr))
        norm = getattr(stack, self.final_norm_attr) if self.final_norm_attr else None
        if norm is not None:
            return type(norm)(width, eps=eps)
        return nn.LayerNorm(width, eps=eps)

    def dims(self, name: str) -> Dims:
        """Index groups of block parameter ``name`` (relative to the block); ``TargetError`` if unknown."""
        for pattern, dims in self.rules:
            if re.fullmatch(pattern, name):
                return dims
        raise TargetError(f"LST ({self.name}): no pruning rule for block parameter {name!r}")


FAMILIES: tuple[StackFamily, ...] = (
    StackFamily("t5", ("T5Stack",), "block", "d_model", "d_ff", "num_heads", "d_kv", "dropout_rate",
                "layer_norm_epsilon", "final_layer_norm", T5_RULES, supports_decoder=True),
    StackFamily("bert", ("BertEncoder", "RobertaEncoder"), "layer", "hidden_size", "intermediate_size",
                "num_attention_heads", None, "hidden_dropout_prob", "layer_norm_eps", None, BERT_RULES,
                supports_decoder=False),
)


@dataclass(frozen=True)
class StackRef:
    """A backbone stack found in a model."""

    name: str
    module: nn.Module
    family: StackFamily
    is_decoder: bool


def family_of(module: nn.Module) -> StackFamily | None:
    cls = type(module).__name__
    return next((f for f in FAMILIES if cls in f.stack_classes), None)


def find_stacks(model: nn.Module, names: list[str] | None = None) -> list[StackRef]:
    """Every supported stack of ``model`` (or only those named in ``names``), in model order."""
    found = []
    for name, module in model.named_modules():
        family = family_of(module)
        if family is None or (names is not None and name not in names):
            continue
        found.append(StackRef(name, module, family, family.is_decoder(module)))
    return found
