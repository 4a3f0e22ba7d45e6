"""Real-size parameter counts (ResNeXt-101 32x8d + BERT-base built on the meta device, no memory, no download):
UniPT's side networks match the upstream counts (reference/unipt.md, peft_core presets) and the recipe trains only
them and the two GPOs."""

from __future__ import annotations

import pytest
from peft_core import adapter_parameters
from vse_infty.model import MethodConfig, ModelConfig, build_model

RESNEXT101_FEATURES = 86_742_336  # resnext101_32x8d 88,791,336 minus its fc classifier (2048 x 1000 + 1000)
BERT_BASE = 109_482_240  # bert-base-uncased with pooler
POOLER = 768 * 768 + 768  # unused (upstream too): never trainable
GPO = 2 * (3 * 32 * 32 * 2 + 3 * 32 * 2) + 32  # bidirectional GRU(32, 32) + Linear(32, 1, bias=False) = 12,704
IMAGE_FC = 2048 * 1024 + 1024
TEXT_LINEAR = 768 * 1024 + 1024


@pytest.fixture(scope="module")
def unipt_model():
    return build_model(ModelConfig(), MethodConfig(name="unipt"), device="meta")


def _count(params) -> int:
    return sum(p.numel() for p in params)


def test_unipt_side_networks_match_upstream(unipt_model) -> None:
    image = _count(adapter_parameters(unipt_model.image_encoder.backbone).values())
    text = _count(adapter_parameters(unipt_model.text_encoder.backbone).values())
    assert image == 6_433_537  # Our_tuning_for_resnet at 256/512/1024/2048, d = 512 (identity convs 3,671,808)
    assert text == 5_921_281  # Our_tuning_for_transformer on 13 x 768, d = 512
    assert GPO == 12_704
    groups = {k: _count(v) for k, v in unipt_model.parameter_groups().items()}
    assert groups == {"image_backbone": image, "image_head": GPO, "text_backbone": text, "text_head": GPO}
    assert _count(unipt_model.trainable_parameters()) == 12_380_226
    total = _count(unipt_model.parameters())
    assert total == RESNEXT101_FEATURES + BERT_BASE + image + text + 2 * GPO
    assert round(100 * 12_380_226 / total, 2) == 5.93


def test_full_finetuning_and_frozen_counts() -> None:
    full = build_model(ModelConfig(), MethodConfig(name="full-finetune"), device="meta")
    everything = RESNEXT101_FEATURES + BERT_BASE + IMAGE_FC + TEXT_LINEAR + 2 * GPO
    assert _count(full.parameters()) == everything == 199_135_616
    assert _count(full.trainable_parameters()) == everything - POOLER == 198_545_024
    frozen = build_model(ModelConfig(), MethodConfig(name="frozen"), device="meta")
    assert _count(frozen.trainable_parameters()) == IMAGE_FC + TEXT_LINEAR + 2 * GPO == 2_911_040


@pytest.mark.parametrize("method,adapters", [("lora", (1_071_768, 294_912)), ("bitfit", (101_440, 102_144)),
                                             ("adapter", (0, 2_379_264)), ("lst", (0, 2_376_492))])
def test_other_methods_at_real_size(method: str, adapters: tuple[int, int]) -> None:
    model = build_model(ModelConfig(), MethodConfig(name=method), device="meta")
    image = _count(p for p in adapter_parameters(model.image_encoder.backbone).values() if p.requires_grad)
    text = _count(p for p in adapter_parameters(model.text_encoder.backbone).values() if p.requires_grad)
    assert (image, text) == adapters  # BitFit: BERT's 102,912 biases but the unused pooler's 768
    if method == "lora":
        assert text == 12 * 2 * 8 * (768 + 768)  # r=8 on query and value of 12 layers
    assert _count(model.trainable_parameters()) == image + text + IMAGE_FC + TEXT_LINEAR + 2 * GPO


def test_precomputed_regions_at_real_size() -> None:
    model = build_model(ModelConfig(image_source="precomp"), MethodConfig(name="unipt"), device="meta")
    mlp = (2048 * 512 + 512) + (512 * 1024 + 1024) + 2 * 512 + 2 * 1024  # MLP(2048, 512, 1024, 2 layers) + 2 BN
    assert _count(model.image_encoder.parameters()) == IMAGE_FC + mlp + GPO
    last_bn = 2 * 1024  # unused (upstream too): never trainable
    assert _count(model.trainable_parameters()) == IMAGE_FC + mlp - last_bn + GPO + 5_921_281 + GPO
