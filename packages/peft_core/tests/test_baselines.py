"""Baseline tables: every shipped table loads and says what it should; malformed tables fail with a precise error."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from peft_core import baselines
from peft_core.baselines import BaselineError, BaselineRow, list_systems, load_baselines, read_table

SYSTEMS = ["pi_tuning", "uni_perceiver", "unipt", "v_petl", "vl_pet", "vse_infty"]


def _one(rows: list[BaselineRow], **where: str) -> BaselineRow:
    found = [r for r in rows if all(getattr(r, k) == v for k, v in where.items())]
    assert len(found) == 1, (where, found)
    return found[0]


# ---------------------------------------------------------------------------------------------------------------------
# shipped tables


def test_every_shipped_table_loads_and_validates() -> None:
    assert list_systems() == SYSTEMS
    for system in SYSTEMS:
        table = read_table(baselines.find_baselines_dir() / f"{system}.toml")
        assert table.system == system and table.rows
        used = {m for row in table.rows for m in row.metrics}
        assert used == set(table.metrics), f"{system}: declared but unused metrics {set(table.metrics) - used}"
        assert all(row.system == system for row in table.rows)
    assert len(load_baselines()) == sum(len(load_baselines(s)) for s in SYSTEMS)


def test_header_documents_every_dataset_and_split_name() -> None:
    """The names a package must write are listed in each file's header comment."""
    for system in SYSTEMS:
        path = baselines.find_baselines_dir() / f"{system}.toml"
        header = "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
        for row in read_table(path).rows:
            for name in (row.dataset, row.split, row.backbone):
                assert f'"{name}"' in header, f"{system}: {name!r} is not documented in the header"


def test_vl_pet_table2_content() -> None:
    rows = load_baselines("vl_pet")
    assert len(rows) == 11 * 5 + 10 * 5 + 4 * 5 + 2 + 11 + 10  # + the dataset-independent Params % rows
    lora = _one(rows, source="paper Table 2", backbone="bart-base", method="lora", dataset="vqa")
    assert (
        lora.split == "karpathy_test" and lora.trainable_percent == 5.93 and dict(lora.metrics) == {"vqa_score": 65.15}
    )
    large = _one(rows, source="paper Table 2", backbone="bart-base", method="vl-pet-large", dataset="coco_caption")
    assert large.metrics["cider"] == 122.03 and large.trainable_percent == 4.16
    lst = _one(rows, source="paper Table 2", backbone="t5-base", method="lst", dataset="average")
    assert lst.split == "vqa+gqa+nlvr2+coco_caption" and lst.metrics["avg"] == 76.90 and lst.trainable_percent == 7.46
    readme = _one(rows, source="README", method="vl-pet-middley", dataset="nlvr2")
    assert readme.metrics["nlvr2_acc"] == 73.92 and readme.backbone == "bart-base"
    t9 = _one(rows, source="paper Table 9", method="compacter+g-large+lw")
    assert t9.metrics["avg"] == 77.72 and t9.trainable_percent == 3.28
    # every method of BART Table 2 has one row per dataset, all with the same Params %
    bart = [r for r in rows if r.source == "paper Table 2" and r.backbone == "bart-base"]
    for method in {r.method for r in bart}:
        mine = [r for r in bart if r.method == method]
        assert {r.dataset for r in mine} == {"vqa", "gqa", "nlvr2", "coco_caption", "average", "*"}
        per_dataset = [r for r in mine if r.dataset != "*"]
        [params] = [r for r in mine if r.dataset == "*"]  # the dataset-independent Params % row
        assert len({r.trainable_percent for r in per_dataset}) == 1
        assert params.metrics["params_percent"] == per_dataset[0].trainable_percent


def test_other_tables_content() -> None:
    pi = load_baselines("pi_tuning")
    assert len(pi) == 6 * 13 + 3 * 13 + 4 + 4
    cap = _one(pi, backbone="ofa-large", method="bitfit", dataset="coco_caption")
    assert dict(cap.metrics) == {"bleu4": 41.02, "meteor": 30.92, "cider": 138.8, "spice": 24.23}
    assert (
        _one(pi, backbone="ofa-base", method="pi-adapter", dataset="refcoco+", split="test_a").metrics["acc50"]
        == 85.87
    )
    assert _one(pi, backbone="t5-base", method="pi-adapter", dataset="average").metrics["avg"] == 89.68
    up = load_baselines("uni_perceiver")
    assert len(up) == 2 * 8 * 3
    moe_ft = _one(up, backbone="uni-perceiver-moe-base", method="full-finetune", dataset="f30k_retrieval")
    assert dict(moe_ft.metrics) == {"i2t_r1": 93.6, "t2i_r1": 79.8}
    vse = _one(load_baselines("vse_infty"), dataset="coco_retrieval")
    assert dict(vse.metrics) == {"i2t_r1": 84.5, "i2t_r5": 98.1, "t2i_r1": 72.0, "t2i_r5": 93.9}
    vp = load_baselines("v_petl")
    assert _one(vp, method="patt-kv-128").metrics["trainable_params_m"] == 4.65
    assert _one(vp, method="head-only", dataset="ssv2").metrics["trainable_params"] == 178350
    assert _one(load_baselines("unipt"), backbone="mdetr-resnet101").metrics["trainable_params_m"] == 0.48


def test_row_matching_and_immutability() -> None:
    row = _one(load_baselines("v_petl"), method="adaptformer-64")
    assert row.dataset == "*" and row.matches(dataset="hmdb51", split="val", backbone="video-swin-base")
    assert not row.matches(dataset="hmdb51", split="val", backbone="vit-base")
    pi = _one(load_baselines("pi_tuning"), backbone="ofa-large", method="lora", dataset="refcoco", split="test_a")
    assert pi.matches(dataset="RefCOCO", split="testA", backbone="ofa_large")  # case, '-' and '_' are ignored
    assert not pi.matches(dataset="refcoco", split="test_b", backbone="ofa-large")
    with pytest.raises(TypeError):
        pi.metrics["acc50"] = 0.0  # type: ignore[index]


# ---------------------------------------------------------------------------------------------------------------------
# discovery


GOOD = """
schema_version = 1
system = "demo"

[metrics]
vqa_score = "VQA soft accuracy (%)"

[[group]]
source = "paper Table 2"
backbone = "bart-base"
dataset = "vqa"
split = "karpathy_test"
rows = [
  { method = "full-finetune", trainable_percent = 100, metrics = { vqa_score = 66.88 } },
  { method = "lora", trainable_percent = 5.93, metrics = { vqa_score = 65.15 } },
]
"""


def _write(tmp_path: Path, text: str, name: str = "demo") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def test_env_var_and_root_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, GOOD)
    monkeypatch.setenv(baselines.ENV_VAR, str(tmp_path))
    rows = load_baselines()
    assert [r.method for r in rows] == ["full-finetune", "lora"] and rows[0].trainable_percent == 100.0
    assert rows[1].origin == "demo.toml group[0].rows[1]"
    monkeypatch.delenv(baselines.ENV_VAR)
    assert load_baselines("demo", root=tmp_path) == rows
    with pytest.raises(FileNotFoundError, match=r"system 'nope'.*available: demo"):
        load_baselines("nope", root=tmp_path)


def test_missing_directory_names_searched_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(baselines.ENV_VAR, str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "absent"))):
        load_baselines()
    monkeypatch.delenv(baselines.ENV_VAR)
    candidates = [tmp_path / "a" / "shared" / "baselines", tmp_path / "shared" / "baselines"]
    monkeypatch.setattr(baselines, "_candidate_dirs", lambda: candidates)
    with pytest.raises(FileNotFoundError) as info:
        load_baselines()
    assert all(str(c) in str(info.value) for c in candidates) and baselines.ENV_VAR in str(info.value)


# ---------------------------------------------------------------------------------------------------------------------
# malformed tables

LORA = '{ method = "lora", trainable_percent = 5.93, metrics = { vqa_score = 65.15 } }'
ROW1 = "group[0].rows[1] (method 'lora')"

MALFORMED = {
    "missing field": (
        GOOD.replace('split = "karpathy_test"\n', ""),
        ["group[0].rows[0] (method 'full-finetune')", "field 'split'", "missing", "non-empty string"],
    ),
    "non-numeric metric": (
        GOOD.replace(LORA, LORA.replace("65.15", '"65.15"')),
        [ROW1, "field 'metrics.vqa_score'", "expected a finite number", "'65.15' (str)"],
    ),
    "unknown metric": (
        GOOD.replace(LORA, LORA.replace("vqa_score = 65.15", "bleu4 = 30.1")),
        [ROW1, "field 'metrics.bleu4'", "not declared in [metrics]", "declared: vqa_score"],
    ),
    "duplicate row": (
        GOOD.replace(LORA, LORA + ",\n  " + LORA.replace("65.15", "60.0")),
        ["group[0].rows[2] (method 'lora')", "duplicate row", "already given at group[0].rows[1]"],
    ),
    "percent out of range": (
        GOOD.replace("5.93", "593"),
        [ROW1, "field 'trainable_percent'", "expected a number in [0, 100]", "593"],
    ),
    "misspelt row field": (
        GOOD.replace(LORA, LORA.replace("trainable_percent", "trainable_pct")),
        [ROW1, "field 'trainable_pct'", "unknown field"],
    ),
    "split not lower-case": (
        GOOD.replace('"karpathy_test"', '"Karpathy test"'),
        ["rows[0]", "field 'split'", "lower-case name", "'Karpathy test'"],
    ),
    "system differs from file name": (GOOD.replace('"demo"', '"other"'), ["field 'system'", "expected 'demo'"]),
    "schema version": (GOOD.replace("schema_version = 1", "schema_version = 2"), ["field 'schema_version'"]),
    "no metrics section": (GOOD.replace('[metrics]\nvqa_score = "VQA soft accuracy (%)"\n', ""), ["[metrics]"]),
    "invalid toml": (GOOD.replace("rows = [", "rows = [[["), ["not valid TOML"]),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_table_error_names_file_row_and_field(tmp_path: Path, case: str) -> None:
    text, expected = MALFORMED[case]
    path = _write(tmp_path, text)
    with pytest.raises(BaselineError) as info:
        read_table(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    for part in expected:
        assert part in message, f"{case}: {part!r} not in {message!r}"
    assert isinstance(info.value, ValueError)
    with pytest.raises(BaselineError):  # load_baselines reports it the same way
        load_baselines(root=tmp_path)


def test_good_table_parses(tmp_path: Path) -> None:
    table = read_table(_write(tmp_path, GOOD))
    assert table.system == "demo" and dict(table.metrics) == {"vqa_score": "VQA soft accuracy (%)"}
    assert [r.key for r in table.rows][1] == ("demo", "paper Table 2", "lora", "bart-base", "vqa", "karpathy_test")
