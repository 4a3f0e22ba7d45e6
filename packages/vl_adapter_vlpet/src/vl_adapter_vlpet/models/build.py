"""Build the model of a run: tokenizer, VL-BART / VL-T5, the method from peft_core, an upstream checkpoint.

Order (as upstream ``src/multitask.py:Trainer.__init__``): tokenizer with the VL special tokens; the language model
with its embeddings resized to the tokenizer; the visual embedding (:class:`peft_core.zoo_vl.VLSeq2Seq`); the method
(:func:`vl_adapter_vlpet.methods.apply_method`: ``make_config`` + ``add_adapter`` + ``mark_trainable``); then, if
given, an upstream ``LAST.pth`` (its adapter tensors need the adapters in place) and the parameter report.

    bundle = build_model(ModelConfig(backbone="bart-base", pretrained="/models/bart-base"),
                         MethodConfig(preset="vl-pet-large"))
    bundle.model(**batch).loss;  bundle.params.percent  # 4.1561 at real size
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from peft_core.report import ParamReport, count_parameters
from peft_core.zoo_vl import VLSeq2Seq

from vl_adapter_vlpet.methods import AppliedMethod, apply_method
from vl_adapter_vlpet.models.backbones import build_language_model
from vl_adapter_vlpet.models.checkpoint import UpstreamLoadReport, load_upstream_checkpoint
from vl_adapter_vlpet.models.config import MethodConfig, ModelConfig
from vl_adapter_vlpet.models.tokenizer import build_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger("vl_adapter_vlpet")


@dataclass
class VLModelBundle:
    """A built model and what describes it.

    ``model``: VLSeq2Seq with the method applied and ``requires_grad`` set; ``tokenizer``: the VL tokenizer (``None``
    when neither ``model.tokenizer`` nor ``model.pretrained`` is set); ``method``: the method name; ``params``: the
    peft_core parameter report (trainable / total, peft_core convention); ``applied``: adapters and recipe;
    ``load_report``: the upstream checkpoint report, if one was loaded; ``generation_kwargs``: what ``generate``
    needs besides the inputs (beams, ``max_length`` = upstream ``--gen_max_length``, ``use_cache=False`` for LST).
    """

    model: VLSeq2Seq
    tokenizer: PreTrainedTokenizerBase | None
    method: str
    backbone: str
    params: ParamReport
    applied: AppliedMethod
    load_report: UpstreamLoadReport | None = None
    generation_kwargs: dict = field(default_factory=dict)

    @property
    def adapters(self) -> list[str]:
        return list(self.applied.adapters)

    @property
    def full(self) -> bool:
        """Full fine-tuning (no adapter, every parameter trains)."""
        return self.applied.full


MODEL_INPUTS = ("input_ids", "attention_mask", "vis_feats", "vis_pos", "vis_attention_mask", "img_order_ids",
                "obj_order_ids", "labels")
"""Keys of a collated batch that :meth:`VLSeq2Seq.forward` takes (``task``, ``ids``, ``targets`` stay behind)."""


def model_inputs(batch: dict, device: str | torch.device | None = None, labels: bool = True) -> dict:
    """The tensors of ``batch`` the model takes (moved to ``device``); ``labels=False`` drops the labels
    (generation)."""
    keys = MODEL_INPUTS if labels else MODEL_INPUTS[:-1]
    out = {k: batch[k] for k in keys if batch.get(k) is not None}
    return {k: v.to(device) for k, v in out.items()} if device is not None else out


def check_compatible(model_cfg: ModelConfig, method_cfg: MethodConfig) -> None:
    """Raise ``ValueError`` when the method has no recipe for the backbone (e.g. LST on BART)."""
    from vl_adapter_vlpet.methods import METHODS

    METHODS[method_cfg.preset].recipe(model_cfg.backbone)


def build_vl_seq2seq(model_cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase | None = None,
                     dropout: float | None = None) -> VLSeq2Seq:
    """VL-BART / VL-T5 without a method: the language model plus the visual embedding (BART's N(0, init_std)
    initialisation, T5's PyTorch defaults, as upstream's ``_init_weights``)."""
    lm = build_language_model(model_cfg, tokenizer, dropout)
    init_std = getattr(lm.config, "init_std", None) if model_cfg.family == "bart" else None
    return VLSeq2Seq(lm, feat_dim=model_cfg.feat_dim, pos_dim=model_cfg.pos_dim, n_images=model_cfg.n_images,
                     init_std=init_std)


def build_model(model_cfg: ModelConfig, method_cfg: MethodConfig, device: str | torch.device = "cpu",
                dropout: float | None = None) -> VLModelBundle:
    """Build the configured model on ``device`` (see the module docstring). ``dropout`` sets upstream's
    ``--dropout`` fields (``None`` keeps the configuration's)."""
    check_compatible(model_cfg, method_cfg)
    tokenizer = build_tokenizer(model_cfg)
    model = build_vl_seq2seq(model_cfg, tokenizer, dropout)
    applied = apply_method(model, method_cfg.preset, model_cfg.backbone, method_cfg.overrides,
                           freeze_vis_emb=model_cfg.freeze_vis_emb, layer_norms=method_cfg.layer_norms)
    report = None
    if model_cfg.upstream_checkpoint is not None:
        report = load_upstream_checkpoint(model, model_cfg.upstream_checkpoint, model_cfg.family)
        log.info("upstream checkpoint\n%s", report.table())
        if not report.ok:
            log.warning("upstream checkpoint %s does not fit exactly: %d missing, %d missing method tensors, "
                        "%d unexpected, %d mismatched, %d task-specific", report.source, len(report.missing),
                        len(report.missing_method), len(report.unexpected), len(report.mismatched),
                        len(report.task_specific))
    model.to(device)
    generation = {"num_beams": model_cfg.num_beams, "max_length": model_cfg.gen_max_length}
    if not applied.recipe.generation_cache:
        generation["use_cache"] = False
    return VLModelBundle(model, tokenizer, method_cfg.preset, model_cfg.backbone, count_parameters(model), applied,
                         report, generation)
