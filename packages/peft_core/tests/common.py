"""The shared property suite every (model, method) case runs, as Hugging Face PEFT's testing_common does.

A case is ``Case(model, preset, overrides, identity)``; :class:`PetlCommonTests` turns a list of cases into
parametrised tests of the promises every method makes:

* identity at init (where the method promises it) and a changed output after one optimizer step;
* gradients only on the method's parameters; base weights bit-identical after training steps;
* save, load into a fresh model, identical outputs; ``remove_adapters`` restores the original state_dict and outputs;
* merge == unmerged with non-identity weights, unmerge restores the base weights (mergeable methods).
"""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any

import pytest
import torch
from peft_core import (
    adapter_parameters,
    add_adapter,
    iter_layers,
    load_adapter,
    make_config,
    mark_trainable,
    merge_adapter,
    merge_and_unload,
    remove_adapters,
    save_adapter,
    unmerge_adapter,
)
from peft_core.testing import build_tiny, output_tensor
from torch import nn


@dataclasses.dataclass(frozen=True)
class Case:
    model: str
    preset: str
    overrides: tuple[tuple[str, Any], ...] = ()
    identity: bool = True
    train_mode: bool = False

    @property
    def id(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.overrides)
        return f"{self.model}-{self.preset}" + (f"[{extra}]" if extra else "")

    def config(self):
        return make_config(self.preset, **dict(self.overrides))


def forward(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    return output_tensor(model(**inputs))


def build(case: Case, seed: int = 0):
    model, make_inputs = build_tiny(case.model, seed)
    return model, make_inputs


def perturb(model: torch.nn.Module, seed: int = 1, std: float = 0.05) -> None:
    """Give every adapter parameter random values (so tests don't pass because a branch is zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter_parameters(model).values():
            p.add_(torch.randn(p.shape, generator=g) * std)


def train_steps(model: torch.nn.Module, inputs: dict, steps: int = 2) -> None:
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        forward(model, inputs).float().pow(2).mean().backward()
        opt.step()


def assert_state_equal(a: dict, b: dict) -> None:
    assert list(a) == list(b), f"state_dict keys differ: {sorted(set(a) ^ set(b))[:6]}"
    for k in a:
        assert torch.equal(a[k], b[k]), f"tensor {k} differs"


class PetlCommonTests:
    """Subclass with ``CASES = [...]`` to run the shared property suite on every case."""

    CASES: typing.ClassVar[list[Case]] = []

    def test_identity_at_init_and_change_after_step(self, case: Case) -> None:
        model, make_inputs = build(case)
        inputs = make_inputs(0)
        base = forward(model, inputs).detach()
        add_adapter(model, case.config())
        mark_trainable(model)
        out = forward(model, inputs).detach()
        if case.identity:
            torch.testing.assert_close(out, base, rtol=0, atol=1e-6)
        train_steps(model, inputs, steps=1)
        after = forward(model, inputs).detach()
        assert not torch.allclose(after, base, atol=1e-6), "one optimizer step left the output unchanged"

    def test_gradients_only_on_method_parameters(self, case: Case) -> None:
        model, make_inputs = build(case)
        add_adapter(model, case.config())
        perturb(model)
        mark_trainable(model)
        own = {id(p) for p in adapter_parameters(model).values()}
        assert own, "the method created no parameters"
        forward(model, make_inputs(0)).float().pow(2).mean().backward()
        for name, p in model.named_parameters():
            if id(p) in own:
                assert p.requires_grad, f"{name} should be trainable"
            else:
                assert not p.requires_grad and p.grad is None, f"base parameter {name} got a gradient"
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter_parameters(model).values())

    def test_base_weights_unchanged_by_training(self, case: Case) -> None:
        model, make_inputs = build(case)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        add_adapter(model, case.config())
        mark_trainable(model)
        train_steps(model, make_inputs(0), steps=2)
        after = remove_adapters(model).state_dict()
        assert_state_equal(before, after)

    def test_save_load_round_trip(self, case: Case, tmp_path) -> None:
        model, make_inputs = build(case)
        add_adapter(model, case.config())
        perturb(model)
        inputs = make_inputs(3)
        expected = forward(model, inputs).detach()
        save_adapter(model, tmp_path)
        fresh, _ = build(case)
        load_adapter(fresh, tmp_path)
        torch.testing.assert_close(forward(fresh, inputs), expected, rtol=0, atol=0)

    def test_remove_restores_original(self, case: Case) -> None:
        model, make_inputs = build(case)
        inputs = make_inputs(1)
        base_state = {k: v.clone() for k, v in model.state_dict().items()}
        base_out = forward(model, inputs).detach()
        add_adapter(model, case.config())
        perturb(model)
        remove_adapters(model)
        assert_state_equal(base_state, model.state_dict())
        torch.testing.assert_close(forward(model, inputs), base_out, rtol=0, atol=0)
        assert not list(iter_layers(model))

    def test_merge_equals_unmerged(self, case: Case) -> None:
        model, make_inputs = build(case)
        add_adapter(model, case.config())
        layers = [layer for _, _, layer in iter_layers(model)]
        if not all(layer.can_merge() for layer in layers):
            with pytest.raises(ValueError, match="cannot be merged"):
                merge_adapter(model)
            return
        perturb(model)
        inputs = make_inputs(2)
        base_weights = {k: v.clone() for k, v in model.state_dict().items() if not re.search(r"(^|\.)petl\.", k)}
        unmerged = forward(model, inputs).detach()
        merge_adapter(model)
        torch.testing.assert_close(forward(model, inputs), unmerged, rtol=1e-4, atol=1e-5)
        merge_adapter(model)  # idempotent
        torch.testing.assert_close(forward(model, inputs), unmerged, rtol=1e-4, atol=1e-5)
        unmerge_adapter(model)
        for k, v in base_weights.items():
            torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=1e-6)
        torch.testing.assert_close(forward(model, inputs), unmerged, rtol=1e-5, atol=1e-6)
        merge_and_unload(model)
        assert not list(iter_layers(model))
        torch.testing.assert_close(forward(model, inputs), unmerged, rtol=1e-4, atol=1e-5)


def parametrize_cases(metafunc: pytest.Metafunc) -> None:
    """Parametrise the ``case`` fixture of a PetlCommonTests subclass over its CASES."""
    cls = metafunc.cls
    if cls is not None and issubclass(cls, PetlCommonTests) and "case" in metafunc.fixturenames:
        metafunc.parametrize("case", cls.CASES, ids=[c.id for c in cls.CASES])


class ToyWindowAttention3D(nn.Module):
    """A Video-Swin-like window attention (attribute names of video_swin_vpetl's WindowAttention3D), window (2, 3, 3),
    relative position index sliced to the N tokens actually used, ``table[index[:N, :N]]``."""

    def __init__(self, dim: int = 16, heads: int = 2, window: tuple[int, int, int] = (2, 3, 3)) -> None:
        super().__init__()
        self.num_heads = heads
        self.scale = (dim // heads) ** -0.5
        size = window[0] * window[1] * window[2]
        span = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.randn(span, heads) * 0.1)
        self.register_buffer("relative_position_index", torch.randint(0, span, (size, size)), persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = nn.Dropout(0.0)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b_, n, c = x.shape
        qkv = self.qkv(x).reshape(b_, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        idx = self.relative_position_index[:n, :n].reshape(-1)
        attn = attn + self.relative_position_bias_table[idx].reshape(n, n, -1).permute(2, 0, 1)[None]
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.view(b_ // nw, nw, self.num_heads, n, n) + mask[None, :, None]).view(-1, self.num_heads, n, n)
        attn = self.attn_drop(attn.softmax(-1))
        return self.proj_drop(self.proj((attn @ v).transpose(1, 2).reshape(b_, n, c)))
