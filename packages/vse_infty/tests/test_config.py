"""Training configuration: upstream defaults, files + overrides, shipped recipes, errors naming the key; the
optimizer groups and the epoch schedule built from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from vse_infty.config import ConfigError, TrainConfig, from_dict, list_recipes, load_config
from vse_infty.engine import (
    EmbeddingWarmup,
    loss_scale,
    lr_multiplier,
    make_optimizer,
    set_epoch_lr,
    upstream_steps_per_epoch,
)
from vse_infty.model.build import build_model
from vse_infty.testing import tiny_method_config, tiny_model_config


def test_defaults_are_the_unipt_recipe_on_vse_infty() -> None:
    """Paranioar/UniPT VSE-infty/train_f30k_wsl.sh + arguments.py."""
    c = TrainConfig()
    assert (c.optim.epochs, c.optim.lr, c.optim.lr_update, c.optim.lr_decay) == (25, 5e-4, 15, 0.1)
    assert (c.optim.weight_decay, c.optim.grad_clip, c.optim.margin) == (1e-4, 2.0, 0.2)
    assert (c.optim.backbone_lr_factor, c.optim.text_lr_factor) == (1.0, 1.0)
    assert (c.optim.vse_mean_warmup_epochs, c.optim.loss_warmup_epoch) == (1, 1)
    assert c.data.batch_size == 112 and (c.data.train_split, c.data.val_split) == ("train", "dev")
    assert c.data.resolved_test_split() == "test"
    assert from_dict({"data": {"dataset": "coco"}}).data.resolved_test_split() == "testall"
    assert c.method.name == "unipt" and (c.model.input_size, c.model.embed_size) == (512, 1024)
    assert c.model.backbone == "resnext101_32x8d" and c.run.resume == "auto"


def test_yaml_json_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  epochs: 5\n  lr: 1.0e-3\nmethod:\n  name: lora\n  text_options: {r: 4}\n")
    c = load_config(path, ["data.batch_size=16", "model.text_encoder=null", "optim.loss_warmup_epoch=null"])
    assert (c.optim.epochs, c.optim.lr, c.data.batch_size) == (5, 1e-3, 16)
    assert c.method.name == "lora" and c.method.text_options == {"r": 4} and c.optim.loss_warmup_epoch is None
    json_path = tmp_path / "c.json"
    json_path.write_text(json.dumps({"data": {"dataset": "coco", "root": "/data/coco"}}))
    assert load_config(json_path).data.root == "/data/coco"
    assert from_dict(yaml.safe_load(yaml.safe_dump(c.to_dict()))) == c  # the YAML dump round-trips


def test_shipped_recipes_load_with_their_upstream_values() -> None:
    assert list_recipes() == ["coco_full_finetune", "coco_precomp", "coco_unipt", "f30k_full_finetune",
                              "f30k_precomp", "f30k_unipt"]
    full = load_config("coco_full_finetune")
    assert full.method.name == "full-finetune" and full.data.resolved_test_split() == "testall"
    assert (full.optim.backbone_lr_factor, full.optim.text_lr_factor, full.optim.embedding_warmup_epochs) == (
        0.01, 0.1, 1)
    precomp = load_config("f30k_precomp.yaml", ["data.root=/x"])
    assert precomp.model.image_source == "precomp" and precomp.optim.loss_warmup_epoch is None
    assert load_config("f30k_unipt").to_dict()["optim"] == TrainConfig().to_dict()["optim"]


@pytest.mark.parametrize(("overrides", "message"), [
    (["optim.epoch=3"], r"unknown key\(s\) \['optim.epoch'\]"),
    (["optim.epochs=x"], r"optim\.epochs='x'"),
    (["optim.lr=0"], r"optim\.lr=0\.0 is not allowed"),
    (["data.dataset=flickr"], r"data\.dataset='flickr' is not allowed; expected one of \['f30k', 'coco'\]"),
    (["data.val_split=../dev"], r"data\.val_split='\.\./dev'"),
    (["method.name=prompt"], r"method\.name='prompt' is not allowed"),
    (["model.input_size=0"], r"model\.input_size=0 is not allowed"),
    (["run.device=tpu"], r"run\.device='tpu'"),
    (["run.resume=/nowhere/ckpt.pt"], r"run\.resume='/nowhere/ckpt\.pt'"),
    (["run.eval_every=0"], r"run\.eval_every=0"),
    (["train.epochs=3"], r"unknown section\(s\) \['train'\]"),
    (["epochs=3"], r"expected section\.key=value"),
])
def test_errors_name_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_missing_config_file_lists_the_recipes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"absent\.yaml: config file not found.*f30k_unipt"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_config(bad)


def test_step_schedule_and_loss_warmup_follow_upstream() -> None:
    optim = TrainConfig().optim
    assert [lr_multiplier(e, optim) for e in (0, 14, 15, 24)] == [1.0, 1.0, 0.1, 0.1]
    assert upstream_steps_per_epoch(145_000, 112) == 145_000 // 112 + 1
    assert loss_scale(0, 7, 10, optim) == 1.0 and loss_scale(2, 7, 10, optim) == 1.0
    assert loss_scale(1, 0, 10, optim) == 0.0 and loss_scale(1, 7, 10, optim) == 0.7
    assert loss_scale(1, 7, 10, from_dict({"optim": {"loss_warmup_epoch": None}}).optim) == 1.0


def test_optimizer_groups_factors_and_embedding_warmup() -> None:
    """Full fine-tuning: CNN x backbone_lr_factor, text encoder x text_lr_factor, heads x 1; every trainable
    parameter in exactly one group; the embedding warm-up freezes only the CNN's own parameters."""
    torch.manual_seed(0)
    model = build_model(tiny_model_config(), tiny_method_config("full-finetune"))
    optim = from_dict({"optim": {"backbone_lr_factor": 0.01, "text_lr_factor": 0.1, "lr": 1e-3}}).optim
    optimizer = make_optimizer(model, optim)
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == pytest.approx({"image_backbone": 1e-5, "text_backbone": 1e-4, "image_head": 1e-3,
                                 "text_head": 1e-3})
    grouped = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    assert all(g["weight_decay"] == 1e-4 for g in optimizer.param_groups)
    set_epoch_lr(optimizer, 20, optim)
    assert {g["name"]: g["lr"] for g in optimizer.param_groups}["image_head"] == pytest.approx(1e-4)

    cnn = list(model.image_encoder.backbone.parameters())
    warmup = EmbeddingWarmup(model, epochs=1)
    assert warmup.apply(0) is True and not any(p.requires_grad for p in cnn)
    assert all(p.requires_grad for p in model.text_encoder.backbone.encoder.parameters())
    assert warmup.apply(1) is False and all(p.requires_grad for p in cnn)


def test_unipt_trains_only_side_networks_and_gpo() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_model_config(), tiny_method_config("unipt"))
    optimizer = make_optimizer(model, TrainConfig().optim)
    names = {id(p): n for n, p in model.named_parameters()}
    trained = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    assert trained and all(".petl." in n or ".gpool." in n for n in trained)
    assert any(".petl." in n for n in trained if n.startswith("image_encoder"))
    assert any(".petl." in n for n in trained if n.startswith("text_encoder"))
