"""Real-size architectures built from configs with random weights (no download), for parameter counts and
benchmarks. Names follow the upstream checkpoints whose architecture they reproduce.

Models are built on the ``meta`` device by default: shapes and parameter counts are exact, no memory is used.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def _bert(kind: str) -> nn.Module:
    from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

    if kind == "roberta":
        return RobertaModel(RobertaConfig(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1,
                                          pad_token_id=1))
    return BertModel(BertConfig())  # bert-base-uncased: 768, 12 layers, 12 heads, vocab 30522


def _bart() -> nn.Module:
    from transformers import BartConfig, BartForConditionalGeneration

    return BartForConditionalGeneration(BartConfig(
        vocab_size=50265, d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
        decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072, max_position_embeddings=1024))


def _t5() -> nn.Module:
    from transformers import T5Config, T5ForConditionalGeneration

    return T5ForConditionalGeneration(T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12,
                                               num_heads=12))


def _clip_b32() -> nn.Module:
    from transformers import CLIPConfig, CLIPModel

    return CLIPModel(CLIPConfig(
        text_config={"hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8, "num_hidden_layers": 12},
        vision_config={"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                       "num_hidden_layers": 12, "patch_size": 32, "image_size": 224},
        projection_dim=512))


def _vit_b16() -> nn.Module:
    from transformers import ViTConfig, ViTModel

    return ViTModel(ViTConfig(), add_pooling_layer=True)


def _timm(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False)

    return build


MODELS: dict[str, tuple[Callable[[], nn.Module], str]] = {
    "bert-base": (lambda: _bert("bert"), "BERT-base (bert-base-uncased), transformers BertModel"),
    "roberta-base": (lambda: _bert("roberta"), "RoBERTa-base, transformers RobertaModel"),
    "bart-base": (_bart, "BART-base (facebook/bart-base), BartForConditionalGeneration"),
    "t5-base": (_t5, "T5-base, T5ForConditionalGeneration"),
    "clip-vit-b-32": (_clip_b32, "CLIP ViT-B/32 (text + vision towers), transformers CLIPModel"),
    "vit-b-16": (_vit_b16, "ViT-B/16 at 224 px, transformers ViTModel"),
    "timm-vit-b-16": (_timm("vit_base_patch16_224"), "ViT-B/16 at 224 px, timm"),
    "swin-b": (_timm("swin_base_patch4_window7_224"), "Swin-B (embed 128, depths 2-2-18-2), timm"),
    "resnet-50": (_timm("resnet50"), "ResNet-50, timm"),
    "resnext-101-32x8d": (_timm("resnext101_32x8d"), "ResNeXt-101 32x8d (VSE-infty WSL backbone), timm"),
}


def build_model(name: str, device: str | torch.device = "meta") -> nn.Module:
    """Build architecture ``name`` with random weights on ``device`` (``meta``: shapes only)."""
    try:
        builder, _ = MODELS[name]
    except KeyError:
        raise ValueError(f"--model {name!r} is not known; expected one of {sorted(MODELS)}") from None
    with torch.device(device):
        model = builder()
    return model.eval()


def register_model(name: str, builder: Callable[[], nn.Module], description: str) -> None:
    """Add an architecture (task packages add their backbones, e.g. Video Swin-B)."""
    MODELS[name] = (builder, description)
