"""Batches from the data pipeline drive a tiny VL-BART / VL-T5 (peft_core.zoo_vl.VLSeq2Seq) with the real tiny VL
tokenizers: forward + loss, backward, beam-search generation, for single-image, two-image and video tasks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from data_fixtures import DataCfg, fixture_texts, write_image_tree, write_video_tree
from peft_core.zoo_vl import VLSeq2Seq
from transformers import BartConfig, BartForConditionalGeneration, T5Config, T5ForConditionalGeneration
from vl_adapter_vlpet.data import build_task_dataset, collate
from vl_adapter_vlpet.testing import tiny_tokenizer

CASES = [("vqa", "karpathy_train"), ("nlvr2", "valid"), ("caption", "karpathy_train"), ("tvqa", "train")]


def tiny_model(backbone: str, vocab: int, feat_dim: int) -> VLSeq2Seq:
    torch.manual_seed(0)
    if backbone == "bart-base":
        cfg = BartConfig(vocab_size=vocab, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                         decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                         max_position_embeddings=256, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                         decoder_start_token_id=2, forced_bos_token_id=None)
        lm = BartForConditionalGeneration(cfg)
    else:
        cfg = T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                       pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
        lm = T5ForConditionalGeneration(cfg)
    return VLSeq2Seq(lm, feat_dim=feat_dim)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("datasets")
    write_image_tree(root, feat_dim=16)
    write_video_tree(root, dim=16)
    return root


@pytest.mark.parametrize("backbone", ["bart-base", "t5-base"])
def test_batches_train_and_generate(backbone: str, root: Path, tmp_path: Path) -> None:
    tok = tiny_tokenizer(backbone, tmp_path / "tok", texts=fixture_texts())
    model = tiny_model(backbone, len(tok), feat_dim=16)
    for task, split in CASES:
        ds = build_task_dataset(task, split, DataCfg(str(root)), tok, feat_dim=16)
        batch = collate(ds.task, [ds[i] for i in range(min(2, len(ds)))], tok)
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "vis_feats", "vis_pos", "img_order_ids",
                                        "obj_order_ids") if k in batch}
        out = model(**inputs, labels=batch["labels"])
        assert torch.isfinite(out.loss), (backbone, task)
        model.zero_grad()
        out.loss.backward()
        assert model.visual_embedding.feat_embedding[0].weight.grad.abs().sum() > 0  # the features reach the loss
        generated = model.generate(**inputs, num_beams=2, max_length=5)
        texts = tok.batch_decode(generated, skip_special_tokens=True)
        assert len(texts) == len(batch["ids"])


@pytest.mark.parametrize("backbone", ["bart-base", "t5-base"])
def test_transformers_tokenizer_truncation_keeps_the_end_token(backbone: str, root: Path, tmp_path: Path) -> None:
    tok = tiny_tokenizer(backbone, tmp_path / "tok", texts=fixture_texts())
    ds = build_task_dataset("vqa", "karpathy_train", DataCfg(str(root)), tok)
    ds.records[0].text = " ".join(["dog"] * 40)
    ids = ds[0]["input_ids"].tolist()
    assert len(ids) == 20 and ids[-1] == tok.eos_token_id
    assert ids[:3] == tok.encode("vqa: dog")[:3]
    assert ds[1]["input_ids"].tolist() == tok.encode("vqa: how many cats are there?")  # short: untouched
    assert tok.unk_token_id not in ds[1]["input_ids"].tolist()
