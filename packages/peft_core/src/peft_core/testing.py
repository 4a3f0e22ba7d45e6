"""Tiny models for tests and demos (built from configs; no download). Shared by every package's test suite.

Each factory returns ``(model, make_inputs)`` where ``make_inputs(seed)`` returns the keyword arguments of one
forward call; :func:`output_tensor` extracts the tensor to compare.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

Inputs = Callable[[int], dict[str, Any]]


def _ids(seed: int, vocab: int = 99, batch: int = 2, length: int = 7, pad_last: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    if pad_last:
        mask[-1, -pad_last:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def tiny_bert(kind: str = "bert") -> tuple[nn.Module, Inputs]:
    from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

    kw = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
              attn_implementation="eager", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if kind == "roberta":
        model = RobertaModel(RobertaConfig(**kw, pad_token_id=1, max_position_embeddings=40))
    else:
        model = BertModel(BertConfig(**kw))
    return model, lambda seed: _ids(seed)


def tiny_bart() -> tuple[nn.Module, Inputs]:
    from transformers import BartConfig, BartForConditionalGeneration

    cfg = BartConfig(vocab_size=100, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                     decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
                     dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, attn_implementation="eager")
    model = BartForConditionalGeneration(cfg)

    def inputs(seed: int) -> dict[str, Any]:
        d = _ids(seed)
        d["decoder_input_ids"] = _ids(seed + 1, length=5, pad_last=0)["input_ids"]
        return d

    return model, inputs


def tiny_t5() -> tuple[nn.Module, Inputs]:
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
                   dropout_rate=0.0, relative_attention_num_buckets=8, attn_implementation="eager")
    model = T5ForConditionalGeneration(cfg)

    def inputs(seed: int) -> dict[str, Any]:
        d = _ids(seed)
        d["decoder_input_ids"] = _ids(seed + 1, length=5, pad_last=0)["input_ids"]
        return d

    return model, inputs


def tiny_clip() -> tuple[nn.Module, Inputs]:
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(
        text_config={"vocab_size": 100, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
                     "num_hidden_layers": 2, "max_position_embeddings": 16, "bos_token_id": 0, "eos_token_id": 2,
                     "pad_token_id": 1},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16)
    model = CLIPModel(cfg)
    model.config._attn_implementation = "eager"

    def inputs(seed: int) -> dict[str, Any]:
        d = _ids(seed)
        d["pixel_values"] = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
        return d

    return model, inputs


def tiny_vit() -> tuple[nn.Module, Inputs]:
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
                    patch_size=8, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                    attn_implementation="eager")
    model = ViTModel(cfg)
    return model, lambda seed: {"pixel_values": torch.randn(2, 3, 32, 32,
                                                            generator=torch.Generator().manual_seed(seed))}


def tiny_timm(name: str = "vit") -> tuple[nn.Module, Inputs]:
    import timm

    if name == "resnet":
        model = timm.create_model("resnet18", pretrained=False, num_classes=5)
        size = 32
    elif name == "swin":
        model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=56, embed_dim=32,
                                  depths=(2, 2), num_heads=(2, 4), num_classes=5)
        size = 56
    else:
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, num_classes=5,
                                  depth=2)
        size = 32
    return model, lambda seed: {"x": torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))}


class ToyMLP(nn.Module):
    """Linear -> ReLU -> LayerNorm -> Linear, the smallest host for Linear/LayerNorm methods."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.lin0 = nn.Linear(d, 2 * d)
        self.norm = nn.LayerNorm(2 * d)
        self.lin1 = nn.Linear(2 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin1(self.norm(torch.relu(self.lin0(x))))


class ToyConv(nn.Module):
    """Two Conv2d layers and a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv1(torch.relu(self.conv0(x))).mean((2, 3)))


def toy_mlp() -> tuple[nn.Module, Inputs]:
    return ToyMLP(), lambda seed: {"x": torch.randn(4, 16, generator=torch.Generator().manual_seed(seed))}


def toy_conv() -> tuple[nn.Module, Inputs]:
    return ToyConv(), lambda seed: {"x": torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(seed))}


def torch_transformer() -> tuple[nn.Module, Inputs]:
    """``nn.TransformerEncoder`` (``nn.MultiheadAttention`` inside), batch_first, with a padding mask."""
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)

    def inputs(seed: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(seed)
        mask = torch.zeros(2, 6, dtype=torch.bool)
        mask[-1, -2:] = True
        return {"src": torch.randn(2, 6, 16, generator=g), "src_key_padding_mask": mask}

    return model, inputs


MODELS: dict[str, Callable[[], tuple[nn.Module, Inputs]]] = {
    "bert": lambda: tiny_bert("bert"),
    "roberta": lambda: tiny_bert("roberta"),
    "bart": tiny_bart,
    "t5": tiny_t5,
    "clip": tiny_clip,
    "vit": tiny_vit,
    "timm_vit": lambda: tiny_timm("vit"),
    "timm_swin": lambda: tiny_timm("swin"),
    "timm_resnet": lambda: tiny_timm("resnet"),
    "toy_mlp": toy_mlp,
    "toy_conv": toy_conv,
    "torch_transformer": torch_transformer,
}


def build_tiny(name: str, seed: int = 0) -> tuple[nn.Module, Inputs]:
    """A tiny model by name, with weights drawn from ``seed``, in eval mode."""
    torch.manual_seed(seed)
    model, inputs = MODELS[name]()
    return model.eval(), inputs


def output_tensor(output: Any) -> torch.Tensor:
    """The main tensor of a model output (logits, last hidden state, or the tensor itself)."""
    if isinstance(output, torch.Tensor):
        return output
    for key in ("logits", "logits_per_image", "last_hidden_state"):
        value = getattr(output, key, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(output, tuple | list):
        return output[0]
    raise TypeError(f"no output tensor in {type(output).__name__}")
