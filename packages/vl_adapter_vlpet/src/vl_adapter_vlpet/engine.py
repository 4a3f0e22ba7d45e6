"""One training epoch over the multitask loader, and generation + scoring of one task's evaluation split.

Loss (upstream ylsung/VL_adapter ``VL-T5/src/vqa_model.py`` / ``gqa_model.py`` / ``nlvr_model.py`` /
``caption_model.py`` ``train_step``, unchanged in HenryHZY/VL-PET@7430cad): token cross-entropy of the decoder
with ``-100`` at padding, averaged over each sample's target tokens, then over the batch; VQA weights each sample
by the soft score of its sampled answer (``batch["scores"]``, when the collate provides it)::

    loss = mean_b( w_b * sum_t CE(b, t) [y_bt != -100] / max(1, #{t: y_bt != -100}) )

Step (``src/multitask.py:Trainer.train``): AdamW step after clipping the global gradient norm to
``optim.clip_grad_norm`` (unscaled first under AMP), then the linear warm-up / decay scheduler steps once per batch.
AMP = fp16 autocast + GradScaler, on CUDA only. A NaN or infinite loss stops the run naming the epoch, step and task.

Generation (``src/multitask.py`` ``vqa_predict`` / ``gqa_predict`` / ``nlvr_predict`` / ``caption_predict``): VQA,
GQA, NLVR2 and the video QA tasks decode greedily (``num_beams=1``) up to ``model.gen_max_length`` tokens; the
captioning tasks use beam search with ``model.num_beams`` (upstream scripts: 5) up to 40 tokens for COCO
(``caption_args.gen_max_length = 40``) and ``model.gen_max_length`` for TVC / YC2C. Outputs are decoded with
``skip_special_tokens=True`` and stripped. Evaluation shards every split over the processes without padding and
gathers the predictions, so every item is scored exactly once.
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from peft_core.runtime.distributed import DistInfo, gather_lists
from peft_core.runtime.session import check_finite
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from vl_adapter_vlpet.checkpointing import unwrap

log = logging.getLogger("vl_adapter_vlpet")

CAPTION_TASKS = ("caption", "tvc", "yc2c")
COCO_CAPTION_MAX_LENGTH = 40
INPUT_KEYS = ("input_ids", "attention_mask", "vis_feats", "vis_pos", "img_order_ids", "obj_order_ids")


def autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """fp16 autocast on CUDA when ``amp``; nothing on the CPU."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def model_inputs(batch: Mapping[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    """The tensors ``VLSeq2Seq.forward`` / ``generate`` take, moved to ``device`` (absent order ids are left out)."""
    return {k: batch[k].to(device, non_blocking=True) for k in INPUT_KEYS if isinstance(batch.get(k), torch.Tensor)}


def seq2seq_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Upstream's loss: per-sample mean token cross-entropy (``-100`` ignored), optionally weighted, batch mean."""
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits of shape {tuple(logits.shape)} do not match labels {tuple(labels.shape)}; "
                         "expected (B, T, vocab) and (B, T)")
    ce = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
    mask = labels.ne(-100).to(ce.dtype)
    per_sample = (ce * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    if weights is not None:
        per_sample = per_sample * weights.to(per_sample)
    return per_sample.mean()


def batch_loss(model: nn.Module, batch: Mapping[str, Any], device: torch.device, amp: bool) -> torch.Tensor:
    """Forward ``batch`` with teacher forcing and return :func:`seq2seq_loss`."""
    labels = batch["labels"].to(device, non_blocking=True)
    with autocast(device, amp):
        out = model(**model_inputs(batch, device), labels=labels, return_dict=True)
    weights = batch.get("scores")
    return seq2seq_loss(out.logits, labels, weights if isinstance(weights, torch.Tensor) else None)


def train_one_epoch(model: nn.Module, loader: Iterable[Mapping[str, Any]], optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, *, epoch: int, device: torch.device,
                    scaler: torch.amp.GradScaler | None, amp: bool, clip_grad_norm: float, global_step: int,
                    progress: bool = True, on_step: Callable[[int, dict[str, float]], None] | None = None,
                    total: int | None = None) -> dict[str, Any]:
    """Train one epoch; returns ``{"loss", "loss_<task>", "steps", "steps_<task>", "lr"}`` (losses averaged)."""
    model.train()
    params = [p for p in unwrap(model).parameters() if p.requires_grad]
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    lr = optimizer.param_groups[0]["lr"]
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=not progress, leave=False, dynamic_ncols=True, total=total)
    for step, batch in enumerate(bar):
        task = batch["task"]
        loss = batch_loss(model, batch, device, amp)
        value = check_finite(loss, f"epoch {epoch}, step {step} (task {task}, lr {lr:.3g})")
        if scaler is not None:
            scaler.scale(loss).backward()
            if clip_grad_norm > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if clip_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        lr = scheduler.get_last_lr()[0]
        global_step += 1
        sums[task] += value
        counts[task] += 1
        bar.set_postfix(task=task, loss=f"{value:.4f}", lr=f"{lr:.2e}")
        if on_step is not None:
            on_step(global_step, {"loss": value, f"loss_{task}": value, "lr": lr})
    steps = sum(counts.values())
    stats: dict[str, Any] = {"loss": sum(sums.values()) / max(steps, 1), "steps": steps, "lr": lr}
    for task in sorted(sums):
        stats[f"loss_{task}"] = sums[task] / counts[task]
        stats[f"steps_{task}"] = counts[task]
    return stats


def linear_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0 over ``warmup_steps``, then linear decay to 0 at ``total_steps``: the factor of
    ``transformers.get_linear_schedule_with_warmup`` (upstream ``trainer_base.py``), ``step / max(1, warmup)`` before
    the warm-up ends and ``max(0, (total - step) / max(1, total - warmup))`` after. Written out here because importing
    ``transformers.optimization`` imports the trainer stack (and HF ``peft`` when installed), seconds per process."""
    if warmup_steps < 0 or total_steps < 1:
        raise ValueError(f"warmup_steps={warmup_steps}, total_steps={total_steps}: expected >= 0 and >= 1")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def generation_kwargs(task: str, num_beams: int, gen_max_length: int) -> dict[str, int]:
    """Upstream decoding settings of ``task`` (see the module docstring)."""
    if task == "caption":
        return {"num_beams": num_beams, "max_length": COCO_CAPTION_MAX_LENGTH}
    if task in CAPTION_TASKS:
        return {"num_beams": num_beams, "max_length": gen_max_length}
    return {"num_beams": 1, "max_length": gen_max_length}


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable[Mapping[str, Any]], tokenizer: Any, gen_kwargs: dict[str, Any], *,
            device: torch.device, amp: bool, info: DistInfo, progress: bool = True,
            desc: str = "eval") -> tuple[dict[str, str], dict[str, Any]]:
    """Generate for every batch of ``loader`` (this process's shard) and gather over processes.

    Returns ``(predictions {id: text}, references {id: target})``; an id seen twice raises (it would be scored
    twice).
    """
    inner = unwrap(model)
    inner.eval()
    pairs: list[tuple[str, str, Any]] = []
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        with autocast(device, amp):
            out = inner.generate(**model_inputs(batch, device), **gen_kwargs)
        texts = tokenizer.batch_decode(out, skip_special_tokens=True)
        targets = batch.get("targets") or [None] * len(texts)
        pairs += [(str(i), t.strip(), ref) for i, t, ref in zip(batch["ids"], texts, targets, strict=True)]
    predictions: dict[str, str] = {}
    references: dict[str, Any] = {}
    for item_id, text, ref in gather_lists(pairs, info):
        if item_id in predictions:
            raise ValueError(f"{desc}: id {item_id!r} occurs twice in the evaluation split; expected unique ids")
        predictions[item_id] = text
        references[item_id] = ref
    return predictions, references
