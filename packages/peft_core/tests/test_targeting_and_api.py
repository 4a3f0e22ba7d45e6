"""Targeting, validation before mutation, several named adapters, delete/remove, checkpoint errors, reports."""

import pytest
import torch
from peft_core import (
    CheckpointError,
    TargetError,
    active_adapters,
    adapter_records,
    add_adapter,
    count_parameters,
    delete_adapter,
    disable_adapters,
    iter_layers,
    load_adapter,
    make_config,
    mark_trainable,
    remove_adapters,
    save_adapter,
    set_active_adapters,
)
from peft_core.checkpoint import CONFIG_NAME, WEIGHTS_NAME, adapter_state_dict
from peft_core.targeting import find_targets
from peft_core.testing import build_tiny, output_tensor


def out(model, inputs):
    return output_tensor(model(**inputs)).detach()


def test_regex_suffix_and_type_targeting():
    model, _ = build_tiny("bart")
    by_regex = [n for n, _ in find_targets(model, r"model\.encoder\.layers\.\d+\.self_attn\.q_proj")]
    assert by_regex == ["model.encoder.layers.0.self_attn.q_proj", "model.encoder.layers.1.self_attn.q_proj"]
    by_suffix = [n for n, _ in find_targets(model, ["q_proj"])]
    assert len(by_suffix) == 6  # 2 encoder self + 2 decoder self + 2 decoder cross
    assert all(n.endswith(".q_proj") for n in by_suffix)
    layer_norms = find_targets(model, None, target_types=["LayerNorm"], exclude_modules=r".*decoder.*")
    assert layer_norms and all("decoder" not in n for n, _ in layer_norms)
    # a suffix matches whole dotted components only: "proj" is no suffix of "q_proj"
    with pytest.raises(TargetError):
        find_targets(model, ["proj"])


def test_no_match_lists_candidates_and_model_is_untouched():
    model, _inputs = build_tiny("bart")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TargetError, match=r"matched no module; candidates: .*q_proj"):
        add_adapter(model, make_config("lora", target_modules=["q_prj"]))
    # a plan that fails on its last host (LoRA on an embedding) must not have touched the first hosts
    with pytest.raises(TargetError, match="shared"):
        add_adapter(model, make_config("lora", target_modules=r"model\.encoder\.layers\.0\.fc1|model\.shared"))
    assert list(model.state_dict()) == list(state) and not adapter_records(model)
    assert not list(iter_layers(model))


def test_bad_regex_is_a_target_error():
    model, _ = build_tiny("toy_mlp")
    with pytest.raises(TargetError, match="not a valid regular expression"):
        add_adapter(model, make_config("lora", target_modules="lin[0"))


def test_records_several_adapters_active_disable_delete():
    model, make_inputs = build_tiny("bert")
    inputs = make_inputs(0)
    base = out(model, inputs)
    rec = add_adapter(model, make_config("lora", init="random"), name="a")
    assert rec.hosts == [f"encoder.layer.{i}.attention.self.{p}" for i in range(2) for p in ("query", "value")]
    add_adapter(model, make_config("houlsby", init="bert"), name="b")
    with pytest.raises(ValueError, match="already exists"):
        add_adapter(model, make_config("lora"), name="a")
    with pytest.raises(ValueError, match="adapter name="):
        add_adapter(model, make_config("lora"), name="bad.name")
    both = out(model, inputs)
    set_active_adapters(model, "a")
    only_a = out(model, inputs)
    assert active_adapters(model) == ["a"]
    set_active_adapters(model, ["b"])
    only_b = out(model, inputs)
    assert not torch.allclose(only_a, only_b) and not torch.allclose(both, only_a)
    with disable_adapters(model):
        torch.testing.assert_close(out(model, inputs), base, rtol=0, atol=0)
    assert active_adapters(model) == ["b"]
    set_active_adapters(model, ["a", "b"])
    torch.testing.assert_close(out(model, inputs), both)
    delete_adapter(model, "b")
    torch.testing.assert_close(out(model, inputs), only_a)
    with pytest.raises(ValueError, match="not on this model"):
        set_active_adapters(model, "b")
    remove_adapters(model)
    torch.testing.assert_close(out(model, inputs), base, rtol=0, atol=0)


def test_mark_trainable_subset_and_extra_heads():
    model, _ = build_tiny("timm_vit")
    add_adapter(model, make_config("lora"), name="a")
    add_adapter(model, make_config("bitfit"), name="b")
    mark_trainable(model, "a", extra=["head"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".petl.a." in n or n.startswith("head.") for n in trainable)
    assert {"head.weight", "head.bias"} <= trainable


def test_modules_to_save_are_trained_saved_and_restored(tmp_path):
    model, _make_inputs = build_tiny("timm_vit")
    original_head = model.head.weight.detach().clone()
    add_adapter(model, make_config("lora", modules_to_save=["head"]))
    mark_trainable(model)
    assert model.head.weight.requires_grad
    with torch.no_grad():
        model.head.weight.add_(1.0)
    save_adapter(model, tmp_path)
    state = adapter_state_dict(model)
    assert "modules_to_save.head.weight" in state
    fresh, _ = build_tiny("timm_vit")
    load_adapter(fresh, tmp_path)
    torch.testing.assert_close(fresh.head.weight, model.head.weight)
    remove_adapters(model)
    torch.testing.assert_close(model.head.weight, original_head, rtol=0, atol=0)


def test_checkpoint_keys_do_not_depend_on_adapter_name(tmp_path):
    model, make_inputs = build_tiny("toy_mlp")
    add_adapter(model, make_config("lora", target_modules=["lin0"], init="random"), name="task_one")
    keys = set(adapter_state_dict(model, "task_one"))
    assert keys == {"lin0.petl.lora.lora_A", "lin0.petl.lora.lora_B"}
    save_adapter(model, tmp_path, "task_one")
    fresh, _ = build_tiny("toy_mlp")
    load_adapter(fresh, tmp_path, name="other")
    inputs = make_inputs(0)
    torch.testing.assert_close(out(fresh, inputs), out(model, inputs), rtol=0, atol=0)


def test_load_into_differently_shaped_model_names_module_and_shapes(tmp_path):
    model, _ = build_tiny("toy_mlp")
    add_adapter(model, make_config("lora", target_modules=["lin0"], r=4))
    save_adapter(model, tmp_path)
    other, _ = build_tiny("toy_mlp")
    add_adapter(other, make_config("lora", target_modules=["lin0"], r=8))
    with pytest.raises(CheckpointError, match=r"module 'lin0'.*\(4, 16\).*\(8, 16\)"):
        load_adapter(other, tmp_path)
    third, _ = build_tiny("toy_mlp")
    add_adapter(third, make_config("lora", target_modules=["lin1"], r=4))
    with pytest.raises(CheckpointError, match="missing"):
        load_adapter(third, tmp_path)


def test_checkpoint_files_written_atomically_and_missing_files(tmp_path):
    model, _ = build_tiny("toy_mlp")
    add_adapter(model, make_config("lora", target_modules=["lin0"]))
    save_adapter(model, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    with pytest.raises(FileNotFoundError, match=WEIGHTS_NAME):
        load_adapter(build_tiny("toy_mlp")[0], tmp_path / "nothing")
    (tmp_path / "ckpt" / CONFIG_NAME).unlink()
    fresh, _ = build_tiny("toy_mlp")
    with pytest.raises(FileNotFoundError, match=CONFIG_NAME):
        load_adapter(fresh, tmp_path / "ckpt")
    assert not adapter_records(fresh)


def test_count_parameters_convention():
    model, _ = build_tiny("toy_mlp")
    base = sum(p.numel() for p in model.parameters())
    add_adapter(model, make_config("lora", target_modules=["lin0"], r=2))
    mark_trainable(model)
    report = count_parameters(model)
    assert report.trainable == 2 * 16 + 32 * 2
    assert report.base_total == base and report.total == base + report.trainable
    assert report.percent == pytest.approx(100 * report.trainable / report.total)
    assert "TOTAL" in report.table() and '"percent"' in report.to_json()


def test_tied_parameters_counted_once():
    model, _ = build_tiny("bart")
    tied = model.lm_head.weight is model.model.shared.weight
    report = count_parameters(model)
    unique = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    assert tied and report.total == unique


def test_default_ffn_target_of_bert_excludes_attention_output():
    model, _ = build_tiny("bert")
    rec = add_adapter(model, make_config("pfeiffer"))
    assert rec.hosts == ["encoder.layer.0.output.dense", "encoder.layer.1.output.dense"]
    found = [n for n, _ in find_targets(model, [r"layer\.\d+\.output\.dense"])]
    assert found == rec.hosts
