"""One measured training step (vse_infty.memory) on tiny towers: UniPT, whose frozen backbone keeps no activation,
needs less step memory than full fine-tuning of the same model (the real-size comparison is `vse-infty memory`)."""

from __future__ import annotations

import pytest
import torch
from vse_infty.memory import measure_train_step
from vse_infty.testing import tiny_method_config, tiny_model_config


def test_unipt_step_needs_less_memory_than_full_finetuning() -> None:
    cfg = tiny_model_config()  # at 256 px the CNN's activations dominate full fine-tuning's step
    unipt = measure_train_step(cfg, tiny_method_config("unipt"), batch_size=8, input_size=256, seq_len=16)
    full = measure_train_step(cfg, tiny_method_config("full-finetune"), batch_size=8, input_size=256, seq_len=16)
    assert unipt["probe"] == full["probe"] and unipt["device"] == "cpu"
    assert unipt["trainable"] < full["trainable"]
    assert unipt["step_mb"] > 0 and full["step_mb"] > 2 * unipt["step_mb"]
    assert full["peak_mb"] > unipt["peak_mb"]
    for result in (unipt, full):
        assert result["input_size"] == 256 and result["batch_size"] == 8 and result["step_s"] > 0
        assert torch.isfinite(torch.tensor(result["loss"]))


def test_precomputed_features_and_argument_errors() -> None:
    result = measure_train_step(tiny_model_config("precomp"), tiny_method_config("frozen"), batch_size=2,
                                warmup_steps=0)
    assert result["backbone"] == "precomp" and result["trainable"] > 0
    with pytest.raises(ValueError, match="needs negatives"):
        measure_train_step(tiny_model_config(), tiny_method_config("frozen"), batch_size=1)
