"""BitFit's ``add_missing``: a new zero-initialised bias on T5's Linear layers and RMS norms (LST ``--use_bitfit``)."""

from __future__ import annotations

import peft_core.tuners.bitfit  # noqa: F401  (registers the method and presets)
import pytest
import torch
from peft_core import adapter_parameters, add_adapter, make_config, mark_trainable
from peft_core.targeting import TargetError
from peft_core.testing import build_tiny, output_tensor
from peft_core.tuners.bitfit.layer import is_rms_norm
from torch import nn


def test_every_linear_and_rms_norm_gets_a_bias_that_acts_like_one() -> None:
    model, make_inputs = build_tiny("t5")
    inputs = make_inputs(0)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    norms = {n: m for n, m in model.named_modules() if is_rms_norm(m)}
    assert norms and all(m._parameters.get("bias") is None for m in norms.values())
    with torch.no_grad():
        reference = output_tensor(model(**inputs))
    add_adapter(model, make_config("bitfit", add_missing=True))
    mark_trainable(model)
    params = adapter_parameters(model)
    expected = sum(m.out_features for m in linears.values()) + sum(m.weight.numel() for m in norms.values())
    assert sum(p.numel() for p in params.values()) == expected
    with torch.no_grad():
        assert torch.equal(output_tensor(model(**inputs)), reference), "zero-initialised: the output is unchanged"
    # a bias b on the final encoder norm is exactly `g * x / rms(x) + b` (what upstream's T5LayerNorm-with-bias does)
    name = "encoder.final_layer_norm"
    norm = model.get_submodule(name)
    delta = next(p for n, p in params.items() if name in n)
    b = torch.randn_like(delta)
    with torch.no_grad():
        delta.copy_(b)
    x = torch.randn(2, 3, norm.weight.numel())
    torch.testing.assert_close(norm(x), norm.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) +
                                                                   norm.variance_epsilon) + b)


def test_rms_norm_without_add_missing_is_refused() -> None:
    model, _ = build_tiny("t5")
    with pytest.raises(TargetError, match="add_missing=True to add one to a Linear or an RMS norm"):
        add_adapter(model, make_config("bitfit", rule="custom", target_modules=["encoder.final_layer_norm"]))
