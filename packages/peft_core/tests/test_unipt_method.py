"""UniPT as a registered peft_core method: ``add_adapter(model, make_config("unipt-..."))`` on the model root.

Checks that the adapted forward equals :class:`UniPTSide` applied to hidden states computed separately (same
weights), that the backbone keeps no activation for backward and gets no gradient, the checkpoint round trip,
``remove_adapters``, the registered presets and the ``params`` counts on the real-size architectures (meta device).
"""

from __future__ import annotations

import json

import pytest
import torch
from common import Case, PetlCommonTests
from peft_core import (
    PetlConfig,
    TargetError,
    adapter_parameters,
    adapter_records,
    add_adapter,
    count_parameters,
    disable_adapters,
    get_method,
    iter_layers,
    list_presets,
    load_adapter,
    make_config,
    mark_trainable,
    remove_adapters,
    save_adapter,
)
from peft_core.cli import main as cli_main
from peft_core.config import config_from_dict
from peft_core.testing import build_tiny, output_tensor, torch_transformer
from peft_core.tuners.unipt import UniPTConfig, UniPTLayer, UniPTTuner
from peft_core.zoo import build_model
from timm.models._features import FeatureListNet
from timm.models.resnet import Bottleneck, ResNet

PRESET_NAMES = [
    "unipt-clip4clip-text",
    "unipt-clip4clip-visual",
    "unipt-clipvil",
    "unipt-mdetr-decoder",
    "unipt-mdetr-encoder",
    "unipt-vse-image",
    "unipt-vse-text",
]
TINY_TEXT = dict(hidden_size=32, num_hidden_states=3, embed_size=16)  # tiny BERT: width 32, embeddings + 2 layers
RESNEXT = [32, 64, 128, 256]  # stage widths of the tiny ResNeXt below (ResNeXt-101 32x8d: 256/512/1024/2048)


# ----------------------------------------------------------------------------------------------------- helpers
def count_saved(fn, *args, **kwargs):
    """``(result, number of tensors saved for backward while running fn)``."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = fn(*args, **kwargs)
    return out, len(saved)


def perturb(model: torch.nn.Module, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter_parameters(model).values():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)


def tiny_bert():
    model, make_inputs = build_tiny("bert")
    inputs = make_inputs(0)
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True).hidden_states
    return model, inputs, hidden


def tiny_resnext(num_classes: int = 5) -> torch.nn.Module:
    """A timm ResNeXt (Bottleneck blocks, grouped 3x3 convs) with one block per stage and 1/8 of the widths."""
    torch.manual_seed(0)
    return ResNet(Bottleneck, (1, 1, 1, 1), num_classes=num_classes, cardinality=2, base_width=32, stem_width=8,
                  channels=(8, 16, 32, 64)).eval()


def tiny_resnet():
    model = tiny_resnext()
    image = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the stage maps written out, independently of any hook
        h = model.maxpool(model.act1(model.bn1(model.conv1(image))))
        maps = []
        for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
            h = stage(h)
            maps.append(h)
    return model, {"x": image}, maps


def hook_ids(model: torch.nn.Module) -> dict[str, tuple[list[int], list[int]]]:
    return {n: (list(m._forward_pre_hooks), list(m._forward_hooks)) for n, m in model.named_modules()}


def the_layer(model: torch.nn.Module, name: str = "default") -> UniPTLayer:
    (layer,) = [layer for _, _, layer in iter_layers(model, name)]
    assert isinstance(layer, UniPTLayer)
    return layer


# ------------------------------------------------------------------------------------------ config + registry
def test_config_is_a_petl_config_with_json_round_trip():
    assert issubclass(UniPTConfig, PetlConfig) and UniPTConfig.method == "unipt"
    assert isinstance(get_method("unipt"), UniPTTuner) and get_method("unipt").config_cls is UniPTConfig
    registered = {p.name for p in list_presets()}
    assert set(PRESET_NAMES) <= registered
    for name in PRESET_NAMES:
        config = make_config(name)
        assert isinstance(config, UniPTConfig)
        data = json.loads(config.to_json())
        assert data["method"] == "unipt" and data["format_version"] == 1
        assert config_from_dict(data) == config
        assert UniPTConfig.from_dict(config.to_dict()) == config
    assert make_config("unipt", hidden_sizes=[8, 8]).hidden_sizes == [8, 8]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(target_modules=["query"]), r"target_modules=\['query'\] is not allowed for UniPT; expected None"),
        (dict(residual_token="last"), r"residual_token='last' is not allowed; expected one of \['first', 'eot'\]"),
        (dict(anchor_module="visual_projection"), r"anchor_module='visual_projection' is not allowed with anchor="),
        (dict(layer_modules="encoder.layer.(\\d+"), r"layer_modules='encoder.layer.\(\\\\d\+' is not allowed"),
        (dict(layer_modules=[]), r"layer_modules=\[\] is not allowed"),
        (dict(include_input="yes"), r"include_input='yes' is not allowed; expected one of \[None, True, False\]"),
        (dict(output_module=""), r"output_module='' is not allowed; expected a non-empty string or None"),
    ],
)
def test_config_validation_of_the_attachment_fields(changes, message):
    with pytest.raises(ValueError, match=message):
        UniPTConfig(**changes)


def test_plan_errors_leave_the_model_untouched():
    model, _ = build_tiny("bert")
    before = list(model.state_dict())
    cases = [
        (make_config("unipt-vse-text"), r"3 features, but hidden_sizes has 13 entries"),
        (make_config("unipt-mdetr-decoder", d_model=32, num_layers=2, select_layers=[1]), "cross_context=True"),
        (make_config("unipt-vse-text", **TINY_TEXT, layer_modules=["nope"]), "matched no module"),
        (make_config("unipt", hidden_sizes=[32] * 3, embed_size=16, anchor="token", identity=False),
         "anchor='token' needs anchor_module"),
        (make_config("unipt-vse-text", **TINY_TEXT, output_module="decoder"), "output_module='decoder' matches no"),
    ]
    for config, message in cases:
        with pytest.raises(TargetError, match=message):
            add_adapter(model, config)
    clip, _ = build_tiny("clip")
    with pytest.raises(TargetError, match=r"found .*text_model\.encoder\.layers.*vision_model\.encoder\.layers"):
        add_adapter(clip, make_config("unipt-vse-text", **TINY_TEXT))
    assert list(model.state_dict()) == before and not adapter_records(model) and not hasattr(model, "petl")


# --------------------------------------------------------------------------------------- BERT (tokens, mask)
def test_bert_output_is_the_side_on_the_hidden_states():
    model, inputs, hidden = tiny_bert()
    record = add_adapter(model, make_config("unipt-vse-text", **TINY_TEXT))
    assert record.hosts == [""]  # the single host is the model root
    layer = the_layer(model)
    assert layer.sources.layers == ("encoder.layer.0", "encoder.layer.1") and layer.sources.include_input
    out = model(**inputs)
    lengths = inputs["attention_mask"].sum(1)  # VSE-infty: caption lengths
    want, p = layer.side(hidden, lengths=lengths)
    assert out.last_hidden_state.shape == (2, 7, 16)
    torch.testing.assert_close(out.last_hidden_state, want, rtol=0, atol=0)
    torch.testing.assert_close(layer.last_output, want.detach(), rtol=0, atol=0)
    assert not layer.last_output.requires_grad
    torch.testing.assert_close(layer.last_confidence, p.detach(), rtol=0, atol=0)
    # attention_mask given positionally is found as well
    positional = model(inputs["input_ids"], inputs["attention_mask"]).last_hidden_state
    torch.testing.assert_close(positional, want, rtol=0, atol=0)
    # the mask matters: without it the masked means differ for the padded sample
    unmasked = model(input_ids=inputs["input_ids"]).last_hidden_state
    assert not torch.allclose(unmasked[1], want[1])
    with disable_adapters(model):
        torch.testing.assert_close(model(**inputs).last_hidden_state, hidden[-1], rtol=0, atol=0)


def test_bert_backbone_keeps_no_activation_and_gets_no_grad():
    model, inputs, hidden = tiny_bert()
    _, saved_plain = count_saved(model, **inputs)
    assert saved_plain > 0  # sanity: the plain forward (parameters requiring grad) saves activations
    add_adapter(model, make_config("unipt-vse-text", **TINY_TEXT))
    layer = the_layer(model)
    assert all(p.requires_grad for p in model.parameters())  # not frozen: the no-grad region alone must hold
    out, saved_model = count_saved(model, **inputs)
    _, saved_side = count_saved(layer.side, [h.clone() for h in hidden], lengths=inputs["attention_mask"].sum(1))
    assert saved_model == saved_side > 0  # only the side network's tensors are kept for backward
    assert torch.is_grad_enabled()
    out.last_hidden_state.square().mean().backward()
    side_params = {id(p) for p in layer.parameters()}
    for name, p in model.named_parameters():
        if id(p) not in side_params:
            assert p.grad is None, f"backbone parameter {name} got a gradient"
    assert all(p.grad is not None for p in layer.parameters())


def test_gradients_only_on_unipt_parameters_after_mark_trainable():
    for model, inputs, config in (
        (*tiny_bert()[:2], make_config("unipt-vse-text", **TINY_TEXT)),
        (*tiny_resnet()[:2], make_config("unipt-vse-image", hidden_sizes=RESNEXT, embed_size=16)),
    ):
        add_adapter(model, config)
        mark_trainable(model)
        own = adapter_parameters(model)
        assert own and all(name.startswith("petl.default.side.") for name in own)
        report = count_parameters(model)
        assert report.trainable == sum(p.numel() for p in own.values())
        output_tensor(model(**inputs)).float().pow(2).mean().backward()
        ids = {id(p) for p in own.values()}
        for name, p in model.named_parameters():
            if id(p) in ids and name.endswith("side.gate.bias"):
                # softmax over the layers is shift-invariant: the shared gate bias gets a zero gradient by design
                assert p.requires_grad and p.grad is not None and p.grad.abs().max() < 1e-6, name
            elif id(p) in ids:
                assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
            else:
                assert not p.requires_grad and p.grad is None, f"base parameter {name} got a gradient"


def test_clipvil_output_feeds_the_frozen_pooler():
    model, inputs, hidden = tiny_bert()
    add_adapter(model, make_config("unipt-clipvil", hidden_size=32, num_layers=2))
    layer = the_layer(model)
    assert layer.sources.output == "encoder"
    mark_trainable(model)
    out = model(**inputs)
    want = layer.side(hidden, mask=inputs["attention_mask"].bool()).output
    torch.testing.assert_close(out.last_hidden_state, want, rtol=0, atol=0)
    torch.testing.assert_close(out.pooler_output, model.pooler(want), rtol=0, atol=0)
    out.pooler_output.sum().backward()  # the pooler runs with grad after the side output: its gradient reaches it
    assert all(p.grad is not None for p in layer.parameters())
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("petl."))


# --------------------------------------------------------------------------------------------- timm ResNet
def test_resnet_output_is_the_side_on_the_stage_maps():
    model, inputs, maps = tiny_resnet()
    add_adapter(model, make_config("unipt-vse-image", hidden_sizes=RESNEXT, embed_size=16))
    layer = the_layer(model)
    assert layer.sources.layers == ("layer1", "layer2", "layer3", "layer4") and not layer.sources.include_input
    out, saved_model = count_saved(model, **inputs)
    want, saved_side = count_saved(layer.side, [m.clone() for m in maps])
    assert out.shape == (2, 4, 16)  # 64 px: layer4 is 2x2, replaced logits by (B, H4*W4, E)
    torch.testing.assert_close(out, want.output, rtol=0, atol=0)
    assert saved_model == saved_side > 0


def test_timm_features_only_output_list_is_replaced():
    backbone = FeatureListNet(tiny_resnext(), out_indices=(1, 2, 3, 4)).eval()  # timm's features_only wrapper
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps = backbone(image)
    add_adapter(backbone, make_config("unipt-vse-image", hidden_sizes=backbone.feature_info.channels(),
                                      embed_size=8))
    out = backbone(image)
    torch.testing.assert_close(out, the_layer(backbone).side(maps).output, rtol=0, atol=0)


# ---------------------------------------------------------------------------- save / load / remove adapters
@pytest.mark.parametrize("kind", ["bert", "resnet"])
def test_save_load_round_trip_and_remove_adapters(kind, tmp_path):
    if kind == "bert":
        build, config = tiny_bert, make_config("unipt-vse-text", **TINY_TEXT)
    else:
        build, config = tiny_resnet, make_config("unipt-vse-image", hidden_sizes=RESNEXT, embed_size=16)
    model, inputs, _ = build()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    base_out = output_tensor(model(**inputs)).detach()
    base_hooks = hook_ids(model)  # transformers installs its own output-capturing hooks
    add_adapter(model, config)
    perturb(model)
    expected = output_tensor(model(**inputs)).detach()
    save_adapter(model, tmp_path)
    fresh, _, _ = build()
    load_adapter(fresh, tmp_path)
    torch.testing.assert_close(output_tensor(fresh(**inputs)), expected, rtol=0, atol=0)
    remove_adapters(model)
    state = model.state_dict()
    assert list(state) == list(base_state)
    assert all(torch.equal(state[k], base_state[k]) for k in state)
    torch.testing.assert_close(output_tensor(model(**inputs)), base_out, rtol=0, atol=0)
    assert hook_ids(model) == base_hooks


# ------------------------------------------------------------- CLIP: two adapters, output at the projections
def test_clip4clip_visual_and_text_sides_on_one_clip_model():
    model, make_inputs = build_tiny("clip")
    x = make_inputs(0)
    with torch.no_grad():
        vis = model.vision_model(pixel_values=x["pixel_values"], output_hidden_states=True)
        txt = model.text_model(input_ids=x["input_ids"], attention_mask=x["attention_mask"], output_hidden_states=True)
        image_anchor = model.visual_projection(vis.pooler_output)
        text_anchor = model.text_projection(txt.pooler_output)
    sizes = dict(width=32, num_hidden_states=3, embed_size=16)
    add_adapter(model, make_config("unipt-clip4clip-visual", **sizes), "visual")
    add_adapter(model, make_config("unipt-clip4clip-text", **sizes), "text")
    mark_trainable(model)
    out = model(**x)
    v_layer, t_layer = the_layer(model, "visual"), the_layer(model, "text")
    want_image = v_layer.side(vis.hidden_states, anchor=image_anchor).output
    want_text = t_layer.side(txt.hidden_states, anchor=text_anchor, mask=x["attention_mask"].bool(),
                             position=x["input_ids"].argmax(-1)).output
    torch.testing.assert_close(out.image_embeds, want_image / want_image.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(out.text_embeds, want_text / want_text.norm(dim=-1, keepdim=True))
    assert torch.is_grad_enabled()
    out.logits_per_image.sum().backward()
    for layer in (v_layer, t_layer):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("petl."))


def test_grad_mode_is_restored_when_the_forward_raises(monkeypatch):
    model, inputs, _ = tiny_bert()
    add_adapter(model, make_config("unipt-vse-text", **TINY_TEXT))
    with pytest.raises(IndexError):
        model(input_ids=inputs["input_ids"] + 1000)  # beyond the vocabulary: the backbone raises
    assert torch.is_grad_enabled() and "_petl_unipt_run" not in model.__dict__

    def broken(*args, **kwargs):
        raise RuntimeError("side failed")

    monkeypatch.setattr(the_layer(model).side, "forward", broken)
    with pytest.raises(RuntimeError, match="side failed"):
        model(**inputs)  # the side raises inside the root hook
    assert torch.is_grad_enabled() and "_petl_unipt_run" not in model.__dict__
    monkeypatch.undo()
    with torch.no_grad():  # an outer no_grad stays in force for the side as well
        assert not model(**inputs).last_hidden_state.requires_grad
    assert torch.is_grad_enabled()
    assert model(**inputs).last_hidden_state.requires_grad


def test_mdetr_encoder_side_on_a_torch_encoder_with_padding_mask():
    model, make_inputs = torch_transformer()
    model.eval()
    x = make_inputs(0)
    hidden = []
    with torch.no_grad():
        h = x["src"]
        hidden.append(h)
        for block in model.layers:
            h = block(h, src_key_padding_mask=x["src_key_padding_mask"])
            hidden.append(h)
    add_adapter(model, make_config("unipt-mdetr-encoder", d_model=16, num_layers=2, select_layers=[0, 1]))
    out = model(**x)
    want = the_layer(model).side(hidden, mask=~x["src_key_padding_mask"]).output
    assert out.shape == (2, 6, 8)  # A + Proj(M), width d_model // 2
    valid = ~x["src_key_padding_mask"]
    torch.testing.assert_close(out[valid], want[valid])


# --------------------------------------------------------------------------------- the property suite, CLI
# (the output keeps the base model's shape in these cases: BERT with embed_size = width, CLIP's logits)
CASES = [
    Case("bert", "unipt-vse-text", tuple({**TINY_TEXT, "embed_size": 32}.items()), identity=False),
    Case("clip", "unipt-clip4clip-visual", (("width", 32), ("num_hidden_states", 3), ("embed_size", 16)),
         identity=False),
]


class TestUniPTCommon(PetlCommonTests):
    CASES = CASES


@pytest.mark.parametrize(
    ("model", "preset", "trainable"),
    [("bert-base", "unipt-vse-text", 5_921_281), ("resnext-101-32x8d", "unipt-vse-image", 6_433_537)],
)
def test_params_counts_on_real_size_models(model, preset, trainable, capsys):
    net = build_model(model)  # meta device: shapes only
    add_adapter(net, make_config(preset))
    mark_trainable(net)
    report = count_parameters(net)
    assert report.trainable == trainable and report.total == report.base_total + trainable
    assert cli_main(["params", "--model", model, "--method", preset]) == 0
    assert f"trainable {trainable:,} of" in capsys.readouterr().out
