"""Config dataclasses: JSON round trip with a format version, forward compatibility, validation errors."""

import json

import pytest
from peft_core import load_config, make_config
from peft_core.config import FORMAT_VERSION, config_from_dict
from peft_core.tuners.bottleneck import BottleneckConfig
from peft_core.tuners.lora import LoraConfig


@pytest.mark.parametrize("preset", ["lora", "houlsby", "adaptformer-64", "bitfit", "layernorm", "vl-adapter"])
def test_json_round_trip(preset, tmp_path):
    config = make_config(preset)
    path = tmp_path / "c.json"
    config.save(path)
    data = json.loads(path.read_text())
    assert data["format_version"] == FORMAT_VERSION and data["method"] == config.method
    assert load_config(path) == config


def test_unknown_keys_from_newer_release_are_dropped_with_warning():
    data = LoraConfig(r=4).to_dict() | {"format_version": FORMAT_VERSION + 1, "use_dora_v9": True}
    with pytest.warns(UserWarning, match="use_dora_v9"):
        config = config_from_dict(data)
    assert config == LoraConfig(r=4)


@pytest.mark.parametrize(
    ("cls", "kwargs", "field", "allowed"),
    [
        (LoraConfig, {"r": 0}, "r", "> 0"),
        (LoraConfig, {"dropout": 1.5}, "dropout", "[0, 1)"),
        (LoraConfig, {"init": "xavier"}, "init", "'default'"),
        (LoraConfig, {"fused_slices": "qx"}, "fused_slices", "subset of 'qkv'"),
        (BottleneckConfig, {"placement": "middle"}, "placement", "'houlsby'"),
        (BottleneckConfig, {"activation": "swish9"}, "activation", "'relu'"),
        (BottleneckConfig, {"bottleneck_dim": None, "reduction_factor": None}, "bottleneck_dim", "exactly one"),
        (BottleneckConfig, {"placement": "custom"}, "placement", "target_modules"),
    ],
)
def test_invalid_values_name_field_and_allowed_values(cls, kwargs, field, allowed):
    with pytest.raises(ValueError) as info:
        cls(**kwargs)
    assert field in str(info.value) and allowed in str(info.value)


def test_wrong_method_and_bad_files(tmp_path):
    with pytest.raises(ValueError, match="cannot be read as a BottleneckConfig"):
        BottleneckConfig.from_dict(LoraConfig().to_dict())
    with pytest.raises(ValueError, match="missing key 'method'"):
        config_from_dict({"r": 3})
    with pytest.raises(ValueError, match="not registered"):
        config_from_dict({"method": "nope"})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json: not valid JSON"):
        load_config(bad)
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        load_config(tmp_path / "missing.json")


def test_make_config_overrides_and_unknown_name():
    assert make_config("lora", r=32).r == 32
    with pytest.raises(ValueError, match="neither a preset nor a method"):
        make_config("lora-xxl")
