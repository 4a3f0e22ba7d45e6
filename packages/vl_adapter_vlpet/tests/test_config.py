"""The run configuration: upstream defaults, files + overrides, value checks naming the key, the shipped recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from vl_adapter_vlpet.cli import recipe_files
from vl_adapter_vlpet.config import UPSTREAM_SPLITS, ConfigError, TrainConfig, dump_yaml, load_config
from vl_adapter_vlpet.data import TASKS
from vl_adapter_vlpet.methods import METHODS, method_names


def test_defaults_are_the_upstream_vl_pet_large_bart_recipe() -> None:
    config = TrainConfig()
    o, d, r = config.optim, config.data, config.run
    assert (o.lr, o.adam_eps, o.weight_decay, o.warmup_ratio, o.clip_grad_norm, o.epochs, o.dropout) == (
        1e-3, 1e-6, 0.01, 0.1, 5.0, 20, 0.1)
    assert o.no_decay == ["bias", "LayerNorm.weight"] and o.adam_betas == [0.9, 0.999]
    assert d.tasks == ["vqa", "gqa", "nlvr2", "caption"] and d.batch_size == 500 and d.task_prompts
    assert (config.model.backbone, config.method.preset, r.test_checkpoint, r.wandb, r.tensorboard) == (
        "bart-base", "vl-pet-large", "best", False, True)
    assert d.split("gqa", "train") == "train,valid" and d.split("gqa", "val") == "testdev"
    assert d.split("vqa", "test") == "karpathy_test" and d.split("nlvr2", "val") == "valid"
    assert d.split("how2qa", "test") == "test_public_release"
    assert set(UPSTREAM_SPLITS) == set(TASKS)  # the data layer knows every task the config accepts


def test_file_then_overrides_and_exponent_floats(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: 0.0003\n  epochs: 5\ndata:\n  tasks: [vqa]\n  splits: {vqa: {val: minival}}\n")
    config = load_config(path, ["optim.lr=3e-4", "data.batch_size=8", "model.n_vis_tokens=49",
                                "model.downsample=false", "run.stop_after=1"])
    # PyYAML (YAML 1.1) reads "3e-4" as text; load_config reads it as a number
    assert config.optim.lr == pytest.approx(3e-4) and isinstance(config.optim.lr, float)
    assert (config.optim.epochs, config.data.batch_size, config.run.stop_after) == (5, 8, 1)
    assert config.data.split("vqa", "val") == "minival" and config.data.split("vqa", "train") == "karpathy_train"
    reader = config.data.reader(config.model)
    assert reader.pool_size is None and reader.video_frames == 49 and reader.root == "datasets"
    assert load_config(None, []).data.reader(load_config(None, []).model).pool_size == 6
    json_file = tmp_path / "run.json"
    json_file.write_text(json.dumps({"run": {"seed": 9595}, "data": {"tasks": ["tvqa", "tvc"], "features": "npz"}}))
    video = load_config(json_file)
    assert video.run.seed == 9595 and video.data.is_video
    assert yaml.safe_load(dump_yaml(video))["data"]["tasks"] == ["tvqa", "tvc"]


@pytest.mark.parametrize(("overrides", "message"), [
    (["optim.epoch=3"], r"unknown key\(s\) \['optim\.epoch'\]"),
    (["data.tasks=[vqa, okvqa]"], r"data\.tasks=\['vqa', 'okvqa'\] is not allowed"),
    (["data.tasks=[vqa, tvqa]", "data.features=npz"], r"mixes image and video tasks"),
    (["data.tasks=[tvqa]"], r"data\.features='h5' is not allowed for video tasks; expected 'npz'"),
    (["data.features=npz"], r"data\.features='npz' is for the video tasks"),
    (["data.splits={gqa: {dev: testdev}}"], r"data\.splits\.gqa\.dev='testdev' is not allowed"),
    (["data.feature_paths={flickr: /x}"], r"data\.feature_paths\.flickr='/x' is not allowed"),
    (["run.test_checkpoint=first"], r"run\.test_checkpoint='first' is not allowed; expected one of \['best', "),
    (["optim.dropout=1.5"], r"optim\.dropout=1\.5 is not allowed"),
    (["optim.adam_betas=[0.9]"], r"optim\.adam_betas=\[0\.9\] is not allowed"),
    (["data.train_answer=argmax"], r"data\.train_answer='argmax' is not allowed"),
    (["run.eval_every=-1"], r"run\.eval_every=-1 is not allowed"),
    (["run.resume=/no/such/checkpoint.pt"], r"run\.resume='/no/such/checkpoint\.pt': expected 'auto', 'none'"),
    (["run.init_from=/no/such/weights.pt"], r"run\.init_from='/no/such/weights\.pt': file not found"),
    (["method.preset=hyperformer"], r"method\.preset='hyperformer' is not available"),
    (["model.backbone=bart-large"], r"model\.backbone='bart-large' is not allowed"),
    (["model.backbone=t5-base", "method.preset=vl-adapter-glarge-lw"],
     r"method\.preset='vl-adapter-glarge-lw' with model\.backbone='t5-base': .* defined for \['bart-base'\]"),
])
def test_bad_values_name_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_every_shipped_recipe_loads_and_is_the_method_tables_upstream_script() -> None:
    recipes = recipe_files()
    expected = {f"{m}-{b.split('-')[0]}" for b in ("bart-base", "t5-base") for m in method_names(b)}
    assert expected | {"video-vl-pet-large-bart"} == set(recipes)
    for name, path in recipes.items():
        config = load_config(path)
        if name.startswith("video-"):
            assert config.data.is_video and config.model.feat_dim == 512 and config.model.n_vis_tokens == 64
            assert (config.data.batch_size, config.optim.lr) == (50, pytest.approx(7e-4))
            continue
        recipe = METHODS[config.method.preset].recipe(config.model.backbone)
        assert name == f"{config.method.preset}-{config.model.backbone.split('-')[0]}"
        assert config.optim.lr == pytest.approx(recipe.lr), name
        assert config.optim.weight_decay == pytest.approx(recipe.weight_decay), name
        assert (config.data.batch_size, config.data.task_prompts) == (recipe.batch_size, recipe.task_prompts), name
        assert config.data.tasks == ["vqa", "gqa", "nlvr2", "caption"] and config.model.n_vis_tokens == 36
    full = load_config(recipes["full-finetune-bart"])
    assert full.data.task_prompts is False and full.optim.lr == pytest.approx(1e-4)  # upstream full_finetuning.sh
    assert load_config("full-finetune-bart") == full, "a shipped recipe's name is accepted for --config"
    with pytest.raises(ConfigError, match=r"nope: config file not found.*vl-pet-large-bart"):
        load_config("nope")
