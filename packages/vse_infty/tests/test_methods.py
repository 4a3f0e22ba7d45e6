"""Every tuning method (from peft_core, chosen by config) on the tiny towers: the trainable set of the method table,
gradients only on trainable parameters, UniPT keeping no backbone activation, per-tower options and config errors."""

from __future__ import annotations

import pytest
import torch
from peft_core.runtime.config import ConfigError
from vse_infty.model import ContrastiveLoss, MethodConfig, build_model
from vse_infty.model.ops import l2norm
from vse_infty.testing import random_batch, tiny_method_config, tiny_model_config

METHODS = ["full-finetune", "frozen", "unipt", "lora", "adapter", "bitfit", "lst"]
UNUSED = (".pooler.", ".mlp.bns.1.")
"""Parameters upstream never uses either (BERT's pooler, the MLP's last BatchNorm): frozen for every method."""
HEADS = ("image_encoder.fc.", "image_encoder.mlp.", "image_encoder.gpool.", "text_encoder.linear.",
         "text_encoder.gpool.")


def _step(model, batch) -> None:
    img, cap = model(batch)
    ContrastiveLoss(0.2, max_violation=True)(img, cap).backward()


def _trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("source", ["backbone", "precomp"])
@pytest.mark.parametrize("method", METHODS)
def test_gradients_only_on_trainable_parameters(method: str, source: str) -> None:
    torch.manual_seed(0)
    cfg = tiny_model_config(source)
    model = build_model(cfg, tiny_method_config(method)).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2, weight_decay=1e-4)
    _step(model, random_batch(cfg, 4))
    optimizer.step()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, f"frozen {name} got a gradient"
            assert torch.equal(p, before[name]), f"frozen {name} changed"
        else:
            assert p.grad is not None, f"trainable {name} got no gradient"  # DDP needs no find_unused_parameters
    trainable = _trainable(model)
    heads = {n for n in trainable if n.startswith(HEADS)}
    rest = trainable - heads
    assert heads == {n for n, _ in model.named_parameters()
                     if n.startswith(HEADS) and not any(u in n for u in UNUSED)}  # heads always train
    assert not any(u in n for n in trainable for u in UNUSED)
    if method == "full-finetune":
        assert trainable == {n for n, _ in model.named_parameters() if not any(u in n for u in UNUSED)}
    elif method == "frozen":
        assert not rest
    else:
        assert rest and all(".petl." in n for n in rest)
        assert any(float(model.get_parameter(n).grad.abs().sum()) > 0 for n in rest)


def test_method_table_towers_and_heads() -> None:
    expected = {
        "unipt": ("unipt-vse-image", "unipt-vse-text"),
        "lora": ("lora", "lora"),
        "adapter": (None, "houlsby"),
        "bitfit": ("bitfit", "bitfit"),
        "lst": (None, "lst"),
        "frozen": (None, None),
        "full-finetune": (None, None),
    }
    for method, (image, text) in expected.items():
        model = build_model(tiny_model_config(), tiny_method_config(method), device="meta")
        assert model.tower_methods == {"image": image, "text": text}, method
        has_heads = method != "unipt"
        assert (model.image_encoder.fc is not None) == has_heads and (model.text_encoder.linear is not None) \
            == has_heads
        if image is None and method not in ("full-finetune",):
            assert not any(p.requires_grad for p in model.image_encoder.backbone.parameters())


def test_lora_on_the_cnn_skips_grouped_convolutions() -> None:
    model = build_model(tiny_model_config(), tiny_method_config("lora"), device="meta")
    backbone = model.image_encoder.backbone
    hosts = {n.rsplit(".petl.", 1)[0] for n, _ in backbone.named_parameters() if ".petl." in n}
    convs = {n: m for n, m in backbone.named_modules() if isinstance(m, torch.nn.Conv2d) and ".petl." not in n}
    assert hosts == {n for n, m in convs.items() if m.groups == 1}
    assert any(m.groups > 1 for m in convs.values())  # the ResNeXt 3x3 convs are grouped and left out


def _count_saved(fn, *args, **kwargs):
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = fn(*args, **kwargs)
    return out, saved


def test_unipt_forward_keeps_no_backbone_activation() -> None:
    """The side networks see a backbone run without autograd: the tensors saved for backward are exactly those of
    the side network + GPO run on precomputed features, and the backbone gets no gradient even if it asked for one."""
    from peft_core import disable_adapters, iter_layers

    torch.manual_seed(0)
    cfg = tiny_model_config(input_size=128)
    model = build_model(cfg, tiny_method_config("unipt")).eval()
    batch = random_batch(cfg, 3, seq_len=9)
    img, txt = model.image_encoder, model.text_encoder
    ((_, _, img_side),) = list(iter_layers(img.backbone))
    ((_, _, txt_side),) = list(iter_layers(txt.backbone))
    with torch.no_grad(), disable_adapters(img.backbone), disable_adapters(txt.backbone):
        maps = img.backbone(batch["images"])
        hidden = txt.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              output_hidden_states=True).hidden_states
    _, saved_img = _count_saved(model.encode_images, batch)
    k = (128 // 32) ** 2
    _, side_img = _count_saved(lambda: l2norm(img.gpool(img_side.side(maps).output, torch.full((3,), k))[0]))
    assert len(saved_img) == len(side_img) > 0
    assert sum(t.numel() for t in saved_img) == sum(t.numel() for t in side_img)
    lengths = batch["attention_mask"].sum(1)
    _, saved_txt = _count_saved(model.encode_texts, batch)
    _, side_txt = _count_saved(
        lambda: l2norm(txt.gpool(txt_side.side(list(hidden), mask=batch["attention_mask"].bool()).output, lengths)[0]))
    assert len(saved_txt) == len(side_txt) > 0

    full = build_model(cfg, tiny_method_config("full-finetune")).eval()
    _, saved_full = _count_saved(full.encode_images, batch)
    assert sum(t.numel() for t in saved_full) > 2 * sum(t.numel() for t in saved_img)

    for p in img.backbone.parameters():
        p.requires_grad_(True)  # even a backbone that asks for gradients gets none through UniPT
    _step(model, batch)
    assert all(p.grad is None for n, p in img.backbone.named_parameters() if not n.startswith("petl."))
    assert all(p.grad is not None for n, p in img.backbone.named_parameters() if n.startswith("petl."))


def test_per_tower_presets_and_options() -> None:
    cfg = tiny_model_config()
    model = build_model(cfg, MethodConfig(name="unipt", image_preset="none", text_options={"side_dim": 8}),
                        device="meta")
    assert model.tower_methods == {"image": None, "text": "unipt-vse-text"}
    assert model.image_encoder.fc is not None  # a frozen CNN without side network needs its fc head
    assert model.text_encoder.backbone.petl["default"].config.d == 8
    pfeiffer = build_model(cfg, MethodConfig(name="adapter", text_preset="pfeiffer"), device="meta")
    assert pfeiffer.tower_methods["text"] == "pfeiffer"
    lora = build_model(cfg, MethodConfig(name="lora", text_options={"r": 2, "alpha": 4.0}), device="meta")
    assert lora.text_encoder.backbone.encoder.layer[0].attention.self.query.petl["default"].lora.lora_A.shape[0] == 2
    half = build_model(cfg, MethodConfig(name="unipt", txt_downsample_factor=4, img_downsample_factor=8),
                       device="meta")
    assert half.text_encoder.backbone.petl["default"].config.d == 32 // 4
    assert half.image_encoder.backbone.petl["default"].config.d == 32 // 8


@pytest.mark.parametrize("method,match", [
    (MethodConfig(name="unipt", text_preset="lora"), "method.text_preset='lora' is a peft_core 'lora' config"),
    (MethodConfig(name="unipt", image_preset="unipt-vse-text"), "UniPT token config"),
    (MethodConfig(name="lora", text_preset="no-such-preset"), "method.text_preset='no-such-preset'"),
    (MethodConfig(name="lora", text_options={"r": -1}), "r=-1"),
    (MethodConfig(name="full-finetune", text_preset="lora"), "method.text_preset is set"),
    (MethodConfig(name="prompt"), "method.name='prompt'"),
])
def test_method_config_errors(method: MethodConfig, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_model(tiny_model_config(), method, device="meta")


def test_backbone_warmup_of_full_finetuning() -> None:
    model = build_model(tiny_model_config(), tiny_method_config("full-finetune"), device="meta")
    model.freeze_backbone()
    assert not any(p.requires_grad for p in model.image_encoder.backbone.parameters())
    assert all(p.requires_grad for n, p in model.text_encoder.named_parameters() if ".pooler." not in n)
    model.unfreeze_backbone(2)  # upstream fixed_blocks=2: stem, layer1 and layer2 stay frozen
    trainable = {n.split(".")[0] for n, p in model.image_encoder.backbone.named_parameters() if p.requires_grad}
    assert trainable == {"layer3", "layer4"}
    model.unfreeze_backbone(0)
    assert all(p.requires_grad for p in model.image_encoder.backbone.parameters())
    unipt = build_model(tiny_model_config(), tiny_method_config("unipt"), device="meta")
    with pytest.raises(RuntimeError, match="only apply to full-finetune"):
        unipt.unfreeze_backbone(0)


def test_parameter_groups_and_tuned_state_round_trip() -> None:
    torch.manual_seed(0)
    cfg = tiny_model_config()
    model = build_model(cfg, tiny_method_config("unipt")).train()
    groups = model.parameter_groups()
    assert set(groups) == {"image_backbone", "image_head", "text_backbone", "text_head"}
    assert sum(len(g) for g in groups.values()) == len(model.trainable_parameters())
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    _step(model, random_batch(cfg, 4))
    optimizer.step()
    state = model.tuned_state_dict()
    assert any(k.endswith("running_mean") and ".petl." in k for k in state)  # side BatchNorm statistics
    assert not any(k.startswith("image_encoder.backbone.layer") for k in state)  # frozen CNN weights are not
    torch.manual_seed(0)
    fresh = build_model(cfg, tiny_method_config("unipt"))
    fresh.load_tuned_state_dict(state)
    batch = random_batch(cfg, 3)
    model.eval()
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(batch)[0], model(batch)[0])
        torch.testing.assert_close(fresh(batch)[1], model(batch)[1])
    with pytest.raises(KeyError, match="lacks"):
        fresh.load_tuned_state_dict({"nope.weight": torch.zeros(1)})
