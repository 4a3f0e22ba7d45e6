"""Checkpoint loading: synthetic upstream VSE-infty / UniPT checkpoints (keys as upstream's ``[img_enc, txt_enc]``
state dicts, DataParallel ``module.`` prefixes, ``opt`` Namespace) round-trip into the model with a key report; a
torch.hub WSL-style (torchvision) ResNeXt state dict maps onto the timm CNN with identical stage maps; the real
EfficientNet-Lite0 file of the demo maps by order (247 tensors); every malformed file is a clear error."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
import torchvision
from peft_core.tuners.unipt import upstream_prefix_map
from vse_infty.model import (
    CheckpointError,
    build_model,
    efficientnet_lite0_weights_path,
    load_efficientnet_lite0_state,
    load_vse_checkpoint,
)
from vse_infty.model.checkpoint import load_backbone_weights, map_by_order
from vse_infty.model.image import create_cnn, create_reference_cnn
from vse_infty.testing import random_batch, tiny_method_config, tiny_model_config

ALIASES = {"conv1": "backbone.base.0", "bn1": "backbone.base.1", "layer1": "backbone.base.4",
           "layer2": "backbone.base.5", "layer3": "backbone.base.6", "layer4": "backbone.top.0"}


def _perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in [*model.parameters(), *(b for n, b in model.named_buffers() if n.endswith(("_mean", "_var")))]:
            t.add_(torch.rand(t.shape, generator=gen) * 0.1)
    return model.eval()


def _side_keys(model: torch.nn.Module, encoder: str) -> dict[str, torch.Tensor]:
    """UniPT side parameters under upstream's ``side_tuning_module`` names (inverse of peft_core's prefix map)."""
    backbone = getattr(model, encoder).backbone
    layer = backbone.petl["default"]
    mapping = {dst: src for src, dst in upstream_prefix_map(layer.config, "our_tuning").items()}
    out = {}
    for key, value in layer.side.state_dict().items():
        dst = next(d for d in mapping if key.startswith(d + "."))
        out["side_tuning_module." + mapping[dst] + key[len(dst):]] = value.clone()
    return out


def _upstream_state(model: torch.nn.Module) -> tuple[dict, dict]:
    """``[img_enc.state_dict(), txt_enc.state_dict()]`` as upstream's DataParallel-wrapped encoders save them."""
    img: dict[str, torch.Tensor] = {}
    txt: dict[str, torch.Tensor] = {}
    if model.image_source == "precomp":
        for key, value in model.image_encoder.state_dict().items():
            img[key] = value.clone()
    else:
        enc = model.image_encoder
        for key, value in enc.backbone.state_dict().items():
            if key.startswith("petl."):
                continue
            img["backbone.resnet." + key] = value.clone()
            stage = key.split(".")[0]
            img[ALIASES[stage] + key[len(stage):]] = value.clone()  # the same tensors under base / top
        img["backbone.resnet.fc.weight"] = torch.randn(1000, enc.channels[-1])
        img["backbone.resnet.fc.bias"] = torch.randn(1000)
        gpool = {k: v.clone() for k, v in enc.gpool.state_dict().items()}
        if enc.fc is None:  # UniPT: upstream's image_encoder IS the GPO
            img.update({"image_encoder." + k: v for k, v in gpool.items()})
            img.update(_side_keys(model, "image_encoder"))
        else:
            img.update({"image_encoder.gpool." + k: v for k, v in gpool.items()})
            img.update({"image_encoder.fc." + k: v.clone() for k, v in enc.fc.state_dict().items()})
    txt_enc = model.text_encoder
    for key, value in txt_enc.backbone.state_dict().items():
        if not key.startswith("petl."):
            txt["bert." + key] = value.clone()
    txt["bert.embeddings.position_ids"] = torch.arange(txt_enc.backbone.config.max_position_embeddings)[None]
    txt.update({"gpool." + k: v.clone() for k, v in txt_enc.gpool.state_dict().items()})
    if txt_enc.linear is None:
        txt.update(_side_keys(model, "text_encoder"))
    else:
        txt.update({"linear." + k: v.clone() for k, v in txt_enc.linear.state_dict().items()})
    return {"module." + k: v for k, v in img.items()}, {"module." + k: v for k, v in txt.items()}


def _save_upstream(model: torch.nn.Module, path: Path) -> Path:
    img, txt = _upstream_state(model)
    opt = argparse.Namespace(embed_size=32, precomp_enc_type="backbone", backbone_source="wsl", margin=0.2)
    torch.save({"epoch": 3, "model": [img, txt], "best_rsum": 500.0, "opt": opt, "Eiters": 42}, path)
    return path


@pytest.mark.parametrize("method,source", [("unipt", "backbone"), ("full-finetune", "backbone"),
                                           ("unipt", "precomp")])
def test_upstream_checkpoint_round_trip(method: str, source: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = tiny_model_config(source)
    reference = _perturbed(build_model(cfg, tiny_method_config(method)), seed=1)
    path = _save_upstream(reference, tmp_path / "model_best.pth")
    torch.manual_seed(123)  # a differently initialised model, filled from the file
    loaded = build_model(tiny_model_config(source, vse_checkpoint=str(path)), tiny_method_config(method)).eval()
    (report,) = loaded.load_reports
    assert report.missing == [] and report.unexpected == [] and report.mismatched == [] and report.ok
    batch = random_batch(cfg, 3)
    with torch.no_grad():
        for got, want in zip(loaded(batch), reference(batch)):
            torch.testing.assert_close(got, want)
    ignored = report.ignored
    assert "txt:bert.embeddings.position_ids" in ignored
    if source == "backbone":
        assert {"img:backbone.resnet.fc.weight", "img:backbone.resnet.fc.bias"} <= set(ignored)
        copies = [k for k in ignored if k.startswith(("img:backbone.base.", "img:backbone.top."))]
        assert len(copies) == sum(1 for k in reference.image_encoder.backbone.state_dict() if not
                                  k.startswith("petl."))
    if method == "unipt":
        assert any(".petl.default.side." in k for k in report.mapped)
        assert report.mapped["text_encoder.gpool.linear.weight"] == "txt:gpool.linear.weight"
    assert "mapped" in report.summary() and report.to_dict()["mapped"] == len(report.mapped)


def test_checkpoint_of_another_method_reports_what_it_lacks(tmp_path: Path) -> None:
    torch.manual_seed(0)
    full = build_model(tiny_model_config(), tiny_method_config("full-finetune"))
    path = _save_upstream(full, tmp_path / "full.pth")
    unipt = build_model(tiny_model_config(), tiny_method_config("unipt"))
    report = load_vse_checkpoint(unipt, path)
    assert not report.ok
    assert any(".petl.default.side." in k for k in report.missing)  # side networks keep their initialisation
    assert {"img:image_encoder.fc.weight", "txt:linear.weight"} <= set(report.unexpected)
    torch.testing.assert_close(unipt.text_encoder.backbone.embeddings.word_embeddings.weight,
                               full.text_encoder.backbone.embeddings.word_embeddings.weight)  # BERT loaded


def test_upstream_checkpoint_errors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    grid = build_model(tiny_model_config(), tiny_method_config("frozen"))
    path = _save_upstream(grid, tmp_path / "grid.pth")
    precomp = build_model(tiny_model_config("precomp"), tiny_method_config("frozen"))
    with pytest.raises(CheckpointError, match=r"model\.image_source='precomp'"):
        load_vse_checkpoint(precomp, path)
    wide = build_model(tiny_model_config(embed_size=16), tiny_method_config("frozen"))
    with pytest.raises(CheckpointError, match=r"(?s)does not fit the model.*fc\.weight: file \(32, 256\)"):
        load_vse_checkpoint(wide, path)
    with pytest.raises(CheckpointError, match="checkpoint file not found"):
        load_vse_checkpoint(grid, tmp_path / "missing.pth")
    torch.save({"state_dict": {"x": torch.zeros(1)}}, tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match=r"expected an upstream VSE-infty checkpoint .* keys \['state_dict'\]"):
        load_vse_checkpoint(grid, tmp_path / "plain.pth")
    torch.save({"model": [{}, {"bogus.weight": torch.zeros(1)}]}, tmp_path / "foreign.pth")
    with pytest.raises(CheckpointError, match="no key of the checkpoint maps"):
        load_vse_checkpoint(grid, tmp_path / "foreign.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_vse_checkpoint(grid, tmp_path / "text.pth")


class _Custom:
    pass


def test_pickled_objects_need_explicit_trust(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_model_config(), tiny_method_config("frozen"))
    img, txt = _upstream_state(model)
    torch.save({"model": [img, txt], "opt": _Custom()}, tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match="allow_pickle=True"):
        load_vse_checkpoint(model, tmp_path / "pickled.pth")
    assert load_vse_checkpoint(model, tmp_path / "pickled.pth", allow_pickle=True).missing == []


# ---------------------------------------------------------------------------------------------------- CNN weights
TV_KWARGS = {"layers": [1, 1, 1, 1], "cardinality": 2, "base_width": 4}


def _torchvision_resnext() -> torch.nn.Module:
    """torchvision's ResNeXt (the class torch.hub's WSL ``resnext101_32x8d_wsl`` builds), one block per stage."""
    torch.manual_seed(0)
    return _perturbed(torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, [1, 1, 1, 1], groups=2,
                                                       width_per_group=4), seed=2)


def test_wsl_state_dict_maps_onto_the_timm_cnn(tmp_path: Path) -> None:
    tv = _torchvision_resnext()
    path = tmp_path / "wsl.pth"
    torch.save(tv.state_dict(), path)
    cfg = tiny_model_config(backbone_kwargs=dict(TV_KWARGS), backbone_weights=str(path))
    model = build_model(cfg, tiny_method_config("frozen")).eval()
    (report,) = model.load_reports
    assert set(report.ignored) == {"fc.weight", "fc.bias"}
    assert report.ok and len(report.mapped) == len(model.image_encoder.backbone.state_dict())
    images = random_batch(cfg, 2)["images"]
    with torch.no_grad():
        h = tv.maxpool(tv.relu(tv.bn1(tv.conv1(images))))
        want = []
        for stage in (tv.layer1, tv.layer2, tv.layer3, tv.layer4):
            h = stage(h)
            want.append(h)
        got = model.image_encoder.backbone(images)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in tv.state_dict().items()}}, wrapped)
    cnn = create_cnn("resnext101_32x8d", TV_KWARGS)
    assert load_backbone_weights(cnn, wrapped, "torchvision", create_reference_cnn("resnext101_32x8d",
                                                                                   TV_KWARGS)).ok
    from safetensors.torch import save_file

    save_file(tv.state_dict(), tmp_path / "wsl.safetensors")
    cnn = create_cnn("resnext101_32x8d", TV_KWARGS)
    load_backbone_weights(cnn, tmp_path / "wsl.safetensors", "timm", create_reference_cnn("resnext101_32x8d",
                                                                                          TV_KWARGS))
    torch.testing.assert_close(cnn.layer4[0].conv3.weight, tv.layer4[0].conv3.weight)


def test_backbone_weight_errors(tmp_path: Path) -> None:
    state = _torchvision_resnext().state_dict()
    reference = create_reference_cnn("resnext101_32x8d", TV_KWARGS)
    cnn = create_cnn("resnext101_32x8d", TV_KWARGS)
    partial = dict(state)
    del partial["layer2.0.conv1.weight"]
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"(?s)missing.*layer2\.0\.conv1\.weight"):
        load_backbone_weights(cnn, tmp_path / "partial.pth", "wsl", reference)
    torch.save({**state, "extra.weight": torch.zeros(2)}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"(?s)unexpected.*extra\.weight"):
        load_backbone_weights(cnn, tmp_path / "extra.pth", "wsl", reference)
    torch.save(state, tmp_path / "ok.pth")
    with pytest.raises(CheckpointError, match=r"tensor #5 'layer1\.0\.conv1\.weight' \(8, 64, 1, 1\) does not match"):
        load_backbone_weights(cnn, tmp_path / "ok.pth", "order", create_reference_cnn("resnext101_32x8d", {
            "layers": [1, 1, 1, 1], "cardinality": 2, "base_width": 8}))
    with pytest.raises(CheckpointError, match="expected a state dict of tensors"):
        torch.save({"a": 1}, tmp_path / "junk.pth")
        load_backbone_weights(cnn, tmp_path / "junk.pth", "wsl", reference)
    with pytest.raises(CheckpointError, match=r"has \d+ by-order|tensors \(num_batches_tracked excluded\)"):
        map_by_order({"a.weight": torch.zeros(1)}, reference.state_dict())


def test_real_efficientnet_lite0_file_maps_by_order() -> None:
    path = efficientnet_lite0_weights_path()
    file_state = torch.load(path, map_location="cpu", weights_only=True)
    tensors = {k: v for k, v in file_state.items() if not k.endswith("num_batches_tracked")}
    assert len(tensors) == 247
    cfg = tiny_model_config(backbone="tf_efficientnet_lite0", backbone_kwargs={}, backbone_weights=str(path),
                            backbone_pretrained_source="order", input_size=96)
    model = build_model(cfg, tiny_method_config("unipt"))
    (report,) = model.load_reports
    assert len(report.mapped) + len(report.ignored) == 247 and report.ok
    assert set(report.ignored) == {"_conv_head.weight", "_bn1.weight", "_bn1.bias", "_bn1.running_mean",
                                   "_bn1.running_var", "_fc.weight", "_fc.bias"}  # head: not a feature level
    own = model.image_encoder.backbone.state_dict()
    for ours, theirs in report.mapped.items():
        assert torch.equal(own[ours], file_state[theirs]), (ours, theirs)
    assert report.mapped["conv_stem.weight"] == "_conv_stem.weight"
    assert model.encode_images(random_batch(cfg, 2)).shape == (2, 32)
    import timm

    full = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    full_report = load_efficientnet_lite0_state(full)
    assert len(full_report.mapped) == 247 and not full_report.ignored
