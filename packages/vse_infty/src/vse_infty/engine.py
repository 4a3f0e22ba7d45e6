"""One training epoch of VSE-infty (VSE++ hinge loss, upstream warm-ups, AdamW step with clipping) and the schedule.

Per epoch ``e`` (upstream Paranioar/UniPT@3fa457d987:VSE-infty/train.py:main/train, lib/vse.py:train_emb):

    lr(group)      = base_lr(group) * (lr_decay if e >= lr_update else 1)          (adjust_learning_rate)
    max_violation  = e >= vse_mean_warmup_epochs        (sum over negatives first, then the hardest one: VSE++)
    loss           = ContrastiveLoss(img_emb, cap_emb) * alpha,
                     alpha = step / (len(train) // batch + 1) in epoch loss_warmup_epoch, else 1  (warmup_alpha)
    grads          = clip_grad_norm_(trainable, grad_clip); AdamW step

The schedule is a function of the epoch, so a resumed run gets the same learning rate as a straight one (upstream
multiplied the optimizer's lr by 0.1 only when ``epoch == lr_update`` and rebuilt the optimizer on resume, so a run
resumed after epoch 15 trained at the undecayed lr again). Under torchrun the embeddings of every process are
gathered with an autograd-aware all-gather, so the hardest negatives are taken over the global batch as with
upstream's ``nn.DataParallel``; DDP's gradient averaging then yields exactly the global-batch gradient.

AMP: fp16 autocast + GradScaler on CUDA only (gradients are unscaled before clipping); the loss is computed in fp32.
A non-finite loss stops the run with :class:`~peft_core.runtime.session.NonFiniteLossError` naming epoch and step.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
import torch
from peft_core.layer import PETL_ATTR
from peft_core.runtime.distributed import DistInfo, gather_lists
from peft_core.runtime.session import check_finite
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader
from tqdm import tqdm

from vse_infty.confidence_plot import ConfidenceMeter
from vse_infty.config import OptimConfig
from vse_infty.evaluation.evaluate import evaluate_split
from vse_infty.model.loss import uses_max_violation, warmup_alpha

log = logging.getLogger("vse_infty")


def autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """fp16 autocast on CUDA when ``amp``; nothing on the CPU."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def lr_multiplier(epoch: int, optim: OptimConfig) -> float:
    """Step schedule: ``lr_decay`` from epoch ``lr_update`` on (upstream ``lr_schedules = [lr_update]``)."""
    return optim.lr_decay if epoch >= optim.lr_update else 1.0


def set_epoch_lr(optimizer: Optimizer, epoch: int, optim: OptimConfig) -> float:
    """Set every group's lr to ``base_lr * lr_multiplier(epoch)``; returns the multiplier."""
    factor = lr_multiplier(epoch, optim)
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    return factor


def loss_scale(epoch: int, step: int, upstream_steps: int, optim: OptimConfig) -> float:
    """Upstream ``warmup_alpha = i / num_loader_iter`` in epoch ``loss_warmup_epoch`` (1 otherwise or if None)."""
    if optim.loss_warmup_epoch is None:
        return 1.0
    return warmup_alpha(epoch, step, upstream_steps, optim.loss_warmup_epoch)


def upstream_steps_per_epoch(dataset_len: int, global_batch: int) -> int:
    """Upstream ``num_loader_iter = len(train_loader.dataset) // batch_size + 1`` (the warm-up divisor)."""
    return dataset_len // global_batch + 1


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def gather_embeddings(emb: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate every process's embeddings along the batch (autograd-aware; identity in a single process)."""
    if not info.enabled:
        return emb
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(emb), dim=0)


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: Optimizer, loss_fn: nn.Module, epoch: int, *,
                    optim: OptimConfig, upstream_steps: int, device: torch.device,
                    scaler: torch.amp.GradScaler | None, amp: bool, clip_params: Iterable[nn.Parameter],
                    info: DistInfo, progress: bool = True, log_every: int = 200) -> dict[str, Any]:
    """Train one epoch; returns ``{"loss", "lr", "steps", "max_violation", "seconds"}`` (loss = mean unscaled)."""
    model.train()
    loss_fn.max_violation = uses_max_violation(epoch, optim.vse_mean_warmup_epochs)
    clip_params = list(clip_params)
    lr = max(group["lr"] for group in optimizer.param_groups)  # the base lr (heads); groups may be scaled down
    total, done, started = 0.0, 0, time.time()
    steps = len(loader)
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=not progress, leave=False, dynamic_ncols=True)
    for step, batch in enumerate(bar):
        batch = to_device(batch, device)
        alpha = loss_scale(epoch, step, upstream_steps, optim)
        with autocast(device, amp):
            img_emb, cap_emb = model(batch)
        if optim.gather_negatives:
            img_emb, cap_emb = gather_embeddings(img_emb, info), gather_embeddings(cap_emb, info)
        raw = loss_fn(img_emb.float(), cap_emb.float())
        value = check_finite(raw, f"epoch {epoch}, step {step} (lr {lr:.3g})")
        loss = raw * alpha if alpha != 1.0 else raw
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if optim.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(clip_params, optim.grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(clip_params, optim.grad_clip)
            optimizer.step()
        total += value
        done += 1
        bar.set_postfix(loss=f"{value:.4f}", alpha=f"{alpha:.2f}")
        if log_every and (step + 1) % log_every == 0:
            log.info("epoch %d step %d/%d: loss %.4f (x alpha %.3f) lr %.3g max_violation %s", epoch, step + 1,
                     steps, value, alpha, lr, loss_fn.max_violation)
    return {"loss": total / max(done, 1), "lr": lr, "steps": done,
            "max_violation": bool(loss_fn.max_violation), "seconds": time.time() - started}


# ----------------------------------------------------------------------------------------------------- optimizer
def _own_parameters(tower: nn.Module | None) -> list[nn.Parameter]:
    """A tower's pre-trained backbone parameters, peft_core method parameters excluded."""
    backbone = getattr(tower, "backbone", None)
    if backbone is None:
        return []
    return [p for n, p in backbone.named_parameters() if PETL_ATTR not in n.split(".")]


def parameter_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters by upstream lr group (``VSEModel.parameter_groups``): ``{image,text}_backbone`` (the
    backbone and the peft_core method on it) and ``{image,text}_head`` (GPO, fc, linear, MLP)."""
    groups = model.parameter_groups() if hasattr(model, "parameter_groups") else {
        "head": [p for p in model.parameters() if p.requires_grad]}
    return {k: v for k, v in groups.items() if v}


def make_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters in upstream's groups (Paranioar/UniPT@3fa457d987:VSE-infty/lib/vse.py):
    the image backbone (with its method) at ``lr * backbone_lr_factor``, the text encoder (with its method) at
    ``lr * text_lr_factor`` (upstream ``bert_lr_factor``), the heads at ``lr``; weight decay ``weight_decay`` on
    every group. Each group keeps its ``base_lr`` for :func:`set_epoch_lr`."""
    groups = parameter_groups(model)
    if not groups:
        raise ValueError("the model has no trainable parameter; expected a method that trains something")
    factors = {"image_backbone": optim.backbone_lr_factor, "text_backbone": optim.text_lr_factor}
    specs = []
    for name, params in groups.items():
        lr = optim.lr * factors.get(name, 1.0)
        specs.append({"params": params, "name": name, "lr": lr, "base_lr": lr})
    return torch.optim.AdamW(specs, lr=optim.lr, weight_decay=optim.weight_decay)


class EmbeddingWarmup:
    """Upstream ``freeze_backbone`` while ``epoch < embedding_warmup_epochs``: the image backbone's own parameters
    that the method trains are frozen (no gradient, no AdamW update, no weight decay), then trained again."""

    def __init__(self, model: nn.Module, epochs: int) -> None:
        self.epochs = epochs
        self.params = [p for p in _own_parameters(getattr(model, "image_encoder", None)) if p.requires_grad]

    def apply(self, epoch: int) -> bool:
        """Freeze or unfreeze for ``epoch``; returns True while frozen."""
        frozen = epoch < self.epochs and bool(self.params)
        for p in self.params:
            p.requires_grad_(not frozen)
        if frozen:
            log.info("epoch %d: image backbone held frozen (optim.embedding_warmup_epochs=%d)", epoch, self.epochs)
        return frozen

    def restore(self) -> None:
        for p in self.params:
            p.requires_grad_(True)


# ---------------------------------------------------------------------------------------------------- evaluation
class ConfidenceRecorder:
    """Stands in for the model during :func:`evaluate_split`: encodes as the model does and, after each batch,
    adds the tower's UniPT confidence rows (``model.confidences()``) to a :class:`ConfidenceMeter`."""

    TOWERS: ClassVar[dict[str, str]] = {"encode_images": "image", "encode_texts": "text"}
    """The ``confidences()`` key of the tower each encode method runs."""

    def __init__(self, model: nn.Module, meter: ConfidenceMeter) -> None:
        self.model, self.meter = model, meter

    @property
    def training(self) -> bool:
        return self.model.training

    def eval(self) -> ConfidenceRecorder:
        self.model.eval()
        return self

    def train(self, mode: bool = True) -> ConfidenceRecorder:
        self.model.train(mode)
        return self

    def _record(self, method: str, batch: dict) -> torch.Tensor:
        out = getattr(self.model, method)(batch)
        tower = self.TOWERS[method]
        confidence = self.model.confidences().get(tower) if hasattr(self.model, "confidences") else None
        if confidence is not None:
            if confidence.shape[0] != out.shape[0]:
                raise RuntimeError(f"{tower} confidences of {confidence.shape[0]} rows for a batch of {out.shape[0]}; "
                                   "expected those of the forward that just ran")
            self.meter.update(tower, confidence)
        return out

    def encode_images(self, batch: dict) -> torch.Tensor:
        return self._record("encode_images", batch)

    def encode_texts(self, batch: dict) -> torch.Tensor:
        return self._record("encode_texts", batch)


def evaluate(model: nn.Module, split_data: Any, tokenizer: Any, transform: Any, *, batch_size: int,
             device: torch.device, dataset: str, split: str, fold5: bool, amp: bool, progress: bool, info: DistInfo,
             max_length: int | None, workers: int, confidence: bool = False
             ) -> tuple[dict[str, float], dict[str, list[float]]]:
    """``evaluation.evaluate_split`` on ``split_data``; with ``confidence`` also the mean UniPT confidence per layer
    and tower over the split (summed over every process): ``(metrics, {tower: [mean p_i]})``."""
    meter = ConfidenceMeter()
    net = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    target = ConfidenceRecorder(net, meter) if confidence else net
    metrics = evaluate_split(target, split_data, tokenizer, transform, batch_size, device, dataset=dataset,
                             split=split, fold5=fold5, amp=amp, progress=progress, dist_info=info,
                             max_length=max_length, workers=workers)
    if not confidence:
        return metrics, {}
    merged = ConfidenceMeter()
    for sums, counts in gather_lists([meter.state()], info):
        merged.merge(sums, counts)
    means = merged.means()
    return metrics, {k: [float(np.round(v, 6)) for v in values] for k, values in means.items()}
