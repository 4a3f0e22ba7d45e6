"""python -m peft_core params / presets on real-size architectures (meta device, exact counts)."""

import json

import pytest
from peft_core.cli import main


def test_params_lora_bart_base_exact(capsys):
    assert main(["params", "--model", "bart-base", "--method", "lora", "--r", "128", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    # q and v of 6 encoder self-attentions + 6 decoder self- and 6 cross-attentions: 36 x 128 x (768 + 768)
    assert data["trainable"] == 36 * 128 * 1536 == 7_077_888
    assert data["total"] == 139_420_416 + 7_077_888  # bart-base has 139.42M parameters (lm_head tied)
    assert data["percent"] == pytest.approx(100 * 7_077_888 / (139_420_416 + 7_077_888))
    assert data["config"]["r"] == 128


def test_params_table_and_presets(capsys):
    assert main(["params", "--model", "bert-base", "--method", "bitfit"]) == 0
    text = capsys.readouterr().out
    assert "TOTAL" in text and "trainable 102,912 of" in text  # every bias of BERT-base
    assert main(["presets"]) == 0
    assert "adaptformer-64" in capsys.readouterr().out


def test_params_bad_override_and_model():
    with pytest.raises(SystemExit, match="has no field 'rank'"):
        main(["params", "--model", "bert-base", "--method", "lora", "--rank", "4"])
    with pytest.raises(ValueError, match="is not known"):
        main(["params", "--model", "bert-huge", "--method", "lora"])
    with pytest.raises(SystemExit, match="r=0 is not allowed"):
        main(["params", "--model", "bert-base", "--method", "lora", "--r", "0"])
