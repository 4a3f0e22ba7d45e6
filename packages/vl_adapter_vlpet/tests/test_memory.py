"""Training-step memory and time: VL-PET-large needs less than full fine-tuning (no gradients and AdamW state for the
frozen backbone) on a small VL-BART with the real vocabulary; measurement settings are checked."""

from __future__ import annotations

import pytest
from vl_adapter_vlpet.memory import format_measurements, measure_train_step

SMALL_BART = {"d_model": 128, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
              "decoder_attention_heads": 4, "encoder_ffn_dim": 256, "decoder_ffn_dim": 256}
KW = {"config_overrides": SMALL_BART, "feat_dim": 64, "n_vis_tokens": 4, "text_len": 8, "target_len": 4, "steps": 1}


def test_vlpet_large_step_needs_less_memory_than_full_finetuning() -> None:
    """VL-BART vocabulary (50,465 x 128 embedding): full fine-tuning keeps a gradient and two AdamW moments for every
    weight (~3 x 4 bytes x 7.4M); VL-PET-large only for its adapters and the visual embedding. Full fine-tuning is
    measured first, so a probe that only grows could not make VL-PET-large come out lower."""
    full = measure_train_step("bart-base", "full-finetune", 2, **KW)
    pet = measure_train_step("bart-base", "vl-pet-large", 2, method_overrides={"r": 32, "gate_dim": 32, "vpa_dim": 32},
                             **KW)
    assert full["trainable"] == full["total"] and pet["trainable"] < full["trainable"] / 10
    weights_mb = full["total"] * 4 / 2**20
    assert full["step_mb"] > 0.5 * weights_mb  # at least the gradients of every weight
    assert pet["step_mb"] < full["step_mb"] - 0.4 * weights_mb
    assert pet["peak_mb"] < full["peak_mb"]
    assert pet["step_s"] > 0 and full["step_s"] > 0
    assert {pet["batch_size"], pet["n_vis_tokens"], pet["text_len"], pet["target_len"]} == {2, 4, 8}
    table = format_measurements([full, pet])
    assert "vl-pet-large" in table and "full-finetune" in table


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="batch_size=0"):
        measure_train_step("bart-base", "vl-pet-large", 0)
