"""Every method (from peft_core) on shifted-window attention: attaches, trains only its parameters, detaches cleanly.

PATT (method ``patt``) and window prefix tuning (``window_prefix``) come from peft_core; these tests use them
through ``import peft_core`` registration.
"""

from __future__ import annotations

import pytest
import torch
from peft_core import adapter_records, disable_adapters, iter_layers, remove_adapters
from video_swin_vpetl.methods import RecipeOptions, apply_recipe, build_recipe
from video_swin_vpetl.models.windows import shifted_window_mask
from vsw_helpers import clip_batch, tiny_model

RECIPES = ["patt-kv-8", "patt-qv-8", "patt-qk-8", "patt-qkv-8", "adaptformer-8", "prefix-4", "lora-4", "bitfit",
           "adaptformer-8+patt-kv-8", "adaptformer-8+prefix-4+patt-kv-8", "head-only", "full"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_gradients_only_on_trainable_parameters(recipe: str) -> None:
    model = tiny_model().train()
    report = apply_recipe(model, build_recipe(recipe))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(clip_batch()).logsumexp(-1).sum().backward()
    optimizer.step()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
        if not p.requires_grad:
            assert torch.equal(p, before[name]), f"frozen {name} changed"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"head.fc.weight", "head.fc.bias"} <= trainable  # the head always trains
    assert report.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    if recipe not in ("head-only", "full"):
        assert all(".petl." in n for n in trainable if not n.startswith("head."))
        assert any(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if ".petl." in n)


@pytest.mark.parametrize("recipe,hosts", [("patt-kv-8", 4), ("adaptformer-8", 4), ("prefix-4", 4), ("lora-4", 4)])
def test_method_reaches_every_block(recipe: str, hosts: int) -> None:
    model = tiny_model()
    apply_recipe(model, build_recipe(recipe))
    (record,) = adapter_records(model).values()
    assert len(record.hosts) == hosts
    if recipe in ("patt-kv-8", "prefix-4"):
        assert all(h.endswith(".attn") for h in record.hosts)  # hosted by WindowAttention3D (duck-typed)


@pytest.mark.parametrize("recipe", ["patt-kv-8", "adaptformer-8", "prefix-4", "lora-4", "bitfit",
                                    "adaptformer-8+patt-kv-8"])
def test_disable_and_remove_restore_the_base_model(recipe: str) -> None:
    model = tiny_model().eval()
    x = clip_batch()
    with torch.no_grad():
        base = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    options = RecipeOptions(patt_init="upstream")
    apply_recipe(model, build_recipe(recipe, options))
    for _, _, layer in iter_layers(model):  # make every method act (zero-initialised branches included)
        for p in layer.parameters():
            torch.nn.init.normal_(p, std=0.05)
    with torch.no_grad():
        adapted = model(x)
        with disable_adapters(model):
            disabled = model(x)
    assert not torch.allclose(adapted, base, atol=1e-6)
    torch.testing.assert_close(disabled, base, rtol=0, atol=0)
    remove_adapters(model)
    with torch.no_grad():
        torch.testing.assert_close(model(x), base, rtol=0, atol=0)
    assert list(model.state_dict()) == list(state)


def test_window_prefix_with_no_tokens_equals_the_attention() -> None:
    """The window prefix method duck-types WindowAttention3D: with an empty prefix its computation (relative
    position bias, shift mask, softmax) must be this module's forward."""
    from peft_core.tuners.window_prefix import window_attention_with_prefix

    attn = tiny_model().eval().layers[0].blocks[1].attn
    mask = shifted_window_mask(4, 8, 8, (2, 4, 4), (1, 2, 2))
    x = torch.randn(2 * mask.shape[0], 32, 32)
    empty = torch.zeros(0, 32)
    with torch.no_grad():
        torch.testing.assert_close(window_attention_with_prefix(attn, x, mask, empty, empty), attn(x, mask),
                                   rtol=1e-6, atol=1e-6)


def test_prefix_runs_in_shifted_windows_with_gradients() -> None:
    """Upstream's prefix modes crashed (view shape, bias (heads, N, N) added to (N, N + L) logits)."""
    model = tiny_model().train()
    apply_recipe(model, build_recipe("prefix-4", RecipeOptions(prefix_reparam=True)))
    model(clip_batch()).sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if ".petl.prefix." in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_readme_recipe_is_two_adapters_plus_head() -> None:
    recipe = build_recipe("readme")
    assert recipe.name == "adaptformer-64+patt-kv-128"
    model = tiny_model()
    apply_recipe(model, recipe)
    records = adapter_records(model)
    assert list(records) == ["ffn", "patt"]
    assert records["patt"].config.mid_dim == 128 and records["patt"].config.scale == 0.8
    assert records["ffn"].config.bottleneck_dim == 64 and records["ffn"].config.scale == 0.1


def test_recipe_names_are_canonical_and_errors_are_clear() -> None:
    assert build_recipe("patt-kv-128+adaptformer-64").name == "adaptformer-64+patt-kv-128"
    assert build_recipe("linear-probe").head_only
    assert build_recipe("full-finetune").full
    assert build_recipe("lora").name == "lora-8"
    with pytest.raises(ValueError, match=r"patt-xx-8.*expected"):
        build_recipe("patt-xx-8")
    with pytest.raises(ValueError, match="cannot be combined"):
        build_recipe("full+patt-kv-8")
    with pytest.raises(ValueError, match="given twice"):
        build_recipe("patt-kv-8+patt-qv-8")


def test_bitfit_trains_backbone_biases_not_the_head_twice() -> None:
    model = tiny_model()
    apply_recipe(model, build_recipe("bitfit"))
    hosts = adapter_records(model)["bitfit"].hosts
    assert "layers.0.blocks.0.attn.qkv" in hosts and "patch_embed.proj" in hosts
    assert not any(h.startswith("head") for h in hosts)
