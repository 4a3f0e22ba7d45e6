"""Official-format checkpoints: wrappers, ``backbone.`` / ``module.`` prefixes, ``cls_head`` mapping, reports."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from video_swin_vpetl.methods import apply_recipe, build_recipe
from video_swin_vpetl.models import CheckpointLoadError, load_checkpoint
from vsw_helpers import clip_batch, tiny_model


def official_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """mmaction keys: backbone.* for the backbone, cls_head.fc_cls.* for an I3D head."""
    state = {}
    for key, value in model.state_dict().items():
        state[key.replace("head.", "cls_head.", 1) if key.startswith("head.") else f"backbone.{key}"] = value.clone()
    return state


def test_fake_official_checkpoint_with_state_dict_wrapper(tmp_path: Path) -> None:
    source = tiny_model(seed=1, head="i3d", num_classes=6).eval()
    path = tmp_path / "swin_micro_official.pth"
    torch.save({"meta": {"epoch": 30}, "state_dict": official_state(source)}, path)
    target = tiny_model(seed=2, head="i3d", num_classes=6).eval()
    report = load_checkpoint(target, path)
    assert report.wrapper == "state_dict"
    assert report.ok and not report.missing and not report.unexpected and not report.mismatched
    assert "head.fc_cls.weight" in report.loaded and "layers.0.blocks.1.attn.relative_position_index" in report.loaded
    x = clip_batch()
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)
    assert "loaded" in report.table()


@pytest.mark.parametrize("wrapper,prefix", [("model", ""), ("module", "module."), (None, "module.backbone.")])
def test_other_wrappers_and_prefixes(wrapper: str | None, prefix: str) -> None:
    source = tiny_model(seed=1)
    state = {f"{prefix}{k}": v for k, v in source.state_dict().items() if not k.startswith("head.")}
    target = tiny_model(seed=2)
    report = load_checkpoint(target, {wrapper: state} if wrapper else state)
    assert report.wrapper == wrapper and report.ok
    assert report.missing == ["head.fc.bias", "head.fc.weight"]  # the file has no head
    torch.testing.assert_close(target.norm.weight, source.norm.weight)


def test_i3d_head_maps_onto_the_vpetl_conv_head() -> None:
    source = tiny_model(seed=1, head="i3d", num_classes=6)
    target = tiny_model(seed=2, head="vpetl", num_classes=6)
    report = load_checkpoint(target, {"state_dict": official_state(source)})
    assert report.renamed == {"cls_head.fc_cls.weight": "head.fc.weight", "cls_head.fc_cls.bias": "head.fc.bias"}
    torch.testing.assert_close(target.head.fc.weight[:, :, 0, 0, 0], source.head.fc_cls.weight)


def test_new_label_set_head_is_reported_not_loaded() -> None:
    source = tiny_model(seed=1, head="i3d", num_classes=400)
    target = tiny_model(seed=2, head="i3d", num_classes=51)
    head_before = target.head.fc_cls.weight.clone()
    report = load_checkpoint(target, {"state_dict": official_state(source)})
    assert report.mismatched == [("head.fc_cls.weight", (400, 64), (51, 64)), ("head.fc_cls.bias", (400,), (51,))]
    assert report.ok  # backbone complete
    assert torch.equal(target.head.fc_cls.weight, head_before)
    assert "head.fc_cls.weight: file (400, 64) vs model (51, 64)" in report.table()
    skipped = load_checkpoint(tiny_model(head="i3d", num_classes=51), {"state_dict": official_state(source)},
                              load_head=False)
    assert skipped.skipped_head == ["head.fc_cls.bias", "head.fc_cls.weight"] and not skipped.mismatched


def test_backbone_shape_mismatch_is_named_and_strict_raises() -> None:
    source = tiny_model(seed=1, window_size=(2, 3, 3))
    target = tiny_model(seed=2)
    report = load_checkpoint(target, official_state(source))
    keys = {k for k, _, _ in report.mismatched}
    assert "layers.0.blocks.0.attn.relative_position_bias_table" in keys and not report.ok
    with pytest.raises(CheckpointLoadError, match="relative_position_bias_table"):
        load_checkpoint(tiny_model(), official_state(source), strict=True)


def test_adapter_parameters_are_reported_apart(tmp_path: Path) -> None:
    """Weights load into a model that already carries peft_core adapters (host parameter names are unchanged)."""
    source = tiny_model(seed=1)
    target = tiny_model(seed=2)
    apply_recipe(target, build_recipe("adaptformer-8+patt-kv-8"))
    report = load_checkpoint(target, {"state_dict": official_state(source)}, load_head=False)
    assert report.ok and not report.missing and report.method_params
    assert all(".petl." in k for k in report.method_params)


def test_unreadable_files_raise_with_the_path(tmp_path: Path) -> None:
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointLoadError, match=r"broken\.pth"):
        load_checkpoint(tiny_model(), bad)
    with pytest.raises(CheckpointLoadError, match=r"missing\.pth: checkpoint file not found"):
        load_checkpoint(tiny_model(), tmp_path / "missing.pth")
    with pytest.raises(CheckpointLoadError, match="no tensors"):
        load_checkpoint(tiny_model(), {"meta": {"a": 1}})
