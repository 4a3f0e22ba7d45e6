"""The VSE-infty towers on tiny configs: shapes with UniPT at several input sizes, normalisation, the wiring of the
side networks into GPO (as upstream UniPT: no fc / linear), precomputed features, frozen BatchNorms, input errors."""

from __future__ import annotations

import pytest
import torch
from peft_core import disable_adapters, iter_layers
from peft_core.runtime.config import ConfigError
from peft_core.tuners.unipt import UniPTLayer
from vse_infty.model import build_model
from vse_infty.model.ops import flat_featuremap, l2norm
from vse_infty.testing import (
    TINY_CHANNELS,
    TINY_EMBED,
    TINY_REGIONS,
    random_batch,
    tiny_method_config,
    tiny_model_config,
)


def _unipt(model: torch.nn.Module) -> UniPTLayer:
    (layer,) = [layer for _, _, layer in iter_layers(model)]
    assert isinstance(layer, UniPTLayer)
    return layer


@pytest.mark.parametrize("size", [64, 96, 128])
def test_unipt_image_tower_shapes_at_several_input_sizes(size: int) -> None:
    torch.manual_seed(0)
    cfg = tiny_model_config(input_size=size)
    model = build_model(cfg, tiny_method_config("unipt")).eval()
    batch = random_batch(cfg, batch_size=3)
    grid = model.image_encoder.grid_features(batch["images"])
    assert grid.shape == (3, (size // 32) ** 2, TINY_EMBED)  # side output replaces the stage maps
    assert model.image_encoder.grid_sizes(size) == [size // 4, size // 8, size // 16, size // 32]
    emb = model.encode_images(batch)
    assert emb.shape == (3, TINY_EMBED)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    alpha = model.confidences()["image"]
    assert alpha.shape == (3, 3)  # layer1..layer3 against the layer4 anchor
    torch.testing.assert_close(alpha.sum(1), torch.ones(3))


@pytest.mark.parametrize("seq_len", [5, 12])
def test_unipt_text_tower_shapes(seq_len: int) -> None:
    torch.manual_seed(0)
    cfg = tiny_model_config()
    model = build_model(cfg, tiny_method_config("unipt")).eval()
    batch = random_batch(cfg, batch_size=4, seq_len=seq_len)
    out = model.text_encoder.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert out.last_hidden_state.shape == (4, seq_len, TINY_EMBED)  # (B, L, E) side output
    emb = model.encode_texts(batch)
    assert emb.shape == (4, TINY_EMBED)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(4))
    assert model.confidences()["text"].shape == (4, 2)  # embeddings + layer 1 against the layer-2 anchor


def test_unipt_outputs_feed_gpo_directly() -> None:
    """Upstream UniPT (lib/encoders.py): image = l2norm(GPO(side(layer1..4))), text = l2norm(GPO(side(hidden)))."""
    torch.manual_seed(0)
    cfg = tiny_model_config()
    model = build_model(cfg, tiny_method_config("unipt")).eval()
    assert model.image_encoder.fc is None and model.text_encoder.linear is None
    batch = random_batch(cfg, batch_size=3, seq_len=7)
    img, txt = model.image_encoder, model.text_encoder
    with torch.no_grad():
        with disable_adapters(img.backbone):
            maps = img.backbone(batch["images"])
        side_img = _unipt(img.backbone).side(maps).output
        k = side_img.shape[1]
        want_img = l2norm(img.gpool(side_img, torch.full((3,), k))[0])
        with disable_adapters(txt.backbone):
            hidden = txt.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                  output_hidden_states=True).hidden_states
        side_txt = _unipt(txt.backbone).side(list(hidden), mask=batch["attention_mask"].bool()).output
        want_txt = l2norm(txt.gpool(side_txt, batch["attention_mask"].sum(1))[0])
        got_img, got_txt = model(batch)
    torch.testing.assert_close(got_img, want_img)
    torch.testing.assert_close(got_txt, want_txt)


def test_grid_path_of_full_finetuning() -> None:
    """Without a side network: fc on the flattened layer4 grid, then GPO and l2norm (EncoderImageAggr)."""
    torch.manual_seed(0)
    cfg = tiny_model_config()
    model = build_model(cfg, tiny_method_config("full-finetune")).eval()
    enc = model.image_encoder
    assert enc.fc.in_features == TINY_CHANNELS[-1]
    assert enc.fc.bias.abs().sum() == 0  # upstream Xavier init with zero bias
    images = random_batch(cfg, 2)["images"]
    with torch.no_grad():
        grid = flat_featuremap(enc.backbone(images)[-1])
        want = l2norm(enc.gpool(enc.fc(grid), torch.full((2,), grid.shape[1]))[0])
        torch.testing.assert_close(model.encode_images({"images": images}), want)


def test_normalisation_can_be_switched_off() -> None:
    torch.manual_seed(0)
    cfg = tiny_model_config(no_imgnorm=True, no_txtnorm=True)
    model = build_model(cfg, tiny_method_config("frozen")).eval()
    img, txt = model(random_batch(cfg, 3))
    assert not torch.allclose(img.norm(dim=1), torch.ones(3))
    assert not torch.allclose(txt.norm(dim=1), torch.ones(3))


def test_precomputed_region_features() -> None:
    torch.manual_seed(0)
    cfg = tiny_model_config("precomp")
    model = build_model(cfg, tiny_method_config("unipt")).eval()
    assert model.image_source == "precomp" and model.tower_methods["image"] is None
    assert model.image_encoder.mlp is not None  # precomp_enc_type "basic": fc + MLP
    batch = random_batch(cfg, batch_size=3)
    emb = model.encode_images(batch)
    assert emb.shape == (3, TINY_EMBED)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    changed = dict(batch)
    changed["features"] = batch["features"].clone()
    n = int(batch["feature_lengths"][1])
    changed["features"][1, n:] = 1e3  # padding regions never count
    if n < TINY_REGIONS:
        torch.testing.assert_close(model.encode_images(changed)[1], emb[1])
    fc_only = build_model(tiny_model_config("precomp", precomp_enc_type="backbone"), tiny_method_config("frozen"))
    assert fc_only.image_encoder.mlp is None


def test_frozen_backbone_batchnorm_stays_in_eval_mode() -> None:
    torch.manual_seed(0)
    cfg = tiny_model_config()
    model = build_model(cfg, tiny_method_config("unipt")).train()
    backbone = model.image_encoder.backbone
    bns = {n: m for n, m in backbone.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    frozen = {n: m for n, m in bns.items() if ".petl." not in f".{n}."}
    side = {n: m for n, m in bns.items() if ".petl." in f".{n}."}
    assert frozen and side
    assert not any(m.training for m in frozen.values())
    assert all(m.training for m in side.values())
    assert model.text_encoder.backbone.training  # BERT keeps its dropout, as upstream's txt_enc.train()
    stats = {n: m.running_mean.clone() for n, m in bns.items()}
    model(random_batch(cfg, 2))
    assert all(torch.equal(m.running_mean, stats[n]) for n, m in frozen.items())
    assert any(not torch.equal(m.running_mean, stats[n]) for n, m in side.items())
    unfrozen = build_model(tiny_model_config(freeze_bn=False), tiny_method_config("full-finetune")).train()
    assert all(m.training for m in unfrozen.image_encoder.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_training_drops_grids_reproducibly_and_eval_does_not() -> None:
    torch.manual_seed(0)
    cfg = tiny_model_config(input_size=128)
    model = build_model(cfg, tiny_method_config("frozen"))
    batch = random_batch(cfg, 4)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.encode_images(batch), model.encode_images(batch))
        model.train()
        torch.manual_seed(5)
        a = model.encode_images(batch)
        torch.manual_seed(5)
        b = model.encode_images(batch)
        torch.manual_seed(6)
        c = model.encode_images(batch)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("backbone", ["tf_efficientnet_lite0", "convnext_atto"])
def test_any_timm_feature_cnn_hosts_unipt(backbone: str) -> None:
    torch.manual_seed(0)
    cfg = tiny_model_config(backbone=backbone, backbone_kwargs={}, input_size=96)
    model = build_model(cfg, tiny_method_config("unipt")).eval()
    channels = model.image_encoder.channels
    assert len(channels) == 4 and model.image_encoder.reductions == [4, 8, 16, 32]
    assert _unipt(model.image_encoder.backbone).config.hidden_sizes == channels
    batch = random_batch(cfg, 2)
    assert model.image_encoder.grid_features(batch["images"]).shape == (2, 9, TINY_EMBED)
    assert model.encode_images(batch).shape == (2, TINY_EMBED)


def test_input_size_must_align_the_stage_maps_for_unipt() -> None:
    with pytest.raises(ConfigError, match=r"model\.input_size=100 is not a multiple of 32"):
        build_model(tiny_model_config(input_size=100), tiny_method_config("unipt"))
    model = build_model(tiny_model_config(input_size=100), tiny_method_config("frozen"))  # no side network: fine
    with pytest.raises(ValueError, match="input_size=100 is not a multiple"):
        model.image_encoder.grid_sizes(100)


def test_batch_errors_name_the_missing_key() -> None:
    model = build_model(tiny_model_config(), tiny_method_config("frozen"))
    with pytest.raises(KeyError, match="'images'"):
        model.encode_images({"features": torch.zeros(1, 2, 3)})
    with pytest.raises(KeyError, match="'attention_mask'"):
        model.encode_texts({"input_ids": torch.zeros(1, 4, dtype=torch.long)})
    with pytest.raises(ValueError, match=r"images must be \(B, 3, H, W\)"):
        model.encode_images({"images": torch.zeros(1, 1, 64, 64)})
    precomp = build_model(tiny_model_config("precomp"), tiny_method_config("frozen"))
    with pytest.raises(KeyError, match="'feature_lengths'"):
        precomp.encode_images({"features": torch.zeros(1, 2, 16)})
    with pytest.raises(ValueError, match=r"\(B, K, 16\)"):
        precomp.encode_images({"features": torch.zeros(1, 2, 8), "feature_lengths": torch.tensor([2])})
