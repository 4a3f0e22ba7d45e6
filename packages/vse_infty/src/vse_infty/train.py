"""Training and evaluation runs (``vse-infty train`` / ``vse-infty eval``).

A training run (upstream Paranioar/UniPT@3fa457d987:VSE-infty/train.py, lib/vse.py; host woodfrog/vse_infty):
build the two towers and apply the method (peft_core, :func:`vse_infty.model.build.build_model`), AdamW on the
trainable parameters only (groups: image backbone x ``backbone_lr_factor``, text encoder x ``text_lr_factor``, the
rest x 1; weight decay 1e-4), the VSE++ loss with its warm-ups (:mod:`vse_infty.engine`), one validation pass per
epoch on ``data.val_split`` (rsum), ``checkpoint-last.pt`` every epoch and ``checkpoint-best.pt`` (a copy) when the
validation rsum improves; then the best weights are evaluated on ``data.test_split`` (COCO ``testall``: 5-fold 1K +
5K) and ``result.json`` (``peft_core.results.RunResult``) is written next to ``log.txt``. The model is chosen on the
validation split only. With UniPT, ``confidence.png`` shows the mean per-layer confidence weights of both side
networks over the validation split at the best epoch.

``run.resume=auto`` continues from ``checkpoint-last.pt`` (weights, buffers, optimizer, scaler, epoch, best score,
RNG states of every process): bit-exact on the CPU. Under ``torchrun`` every process trains on its share of the
global batch (``data.batch_size / WORLD_SIZE``) with a ``DistributedSampler``; evaluation shards images and
captions without padding.

Upstream bugs fixed here: ``best_rsum`` was reset to 0 after loading a checkpoint (the first resumed epoch was
always "best"); the lr decay was applied only when ``epoch == lr_update`` on a fresh optimizer (lost on resume);
the optimizer, the epoch's data order and the RNG were not saved, so a resumed run was not the same run.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from peft_core.report import count_parameters
from peft_core.results import RunResult
from peft_core.runtime.checkpointing import resume_path
from peft_core.runtime.distributed import DistInfo, barrier, distributed_run, gather_lists
from peft_core.runtime.session import seed_everything, start_run
from torch import nn

from vse_infty.checkpointing import (
    BEST,
    FORMAT,
    LAST,
    TrainCheckpointError,
    capture_rng,
    load_trainable_state,
    read_checkpoint,
    restore_rng,
    save_checkpoint,
    trainable_state,
)
from vse_infty.confidence_plot import plot_confidences
from vse_infty.config import ConfigError, TrainConfig, apply_overrides, from_dict
from vse_infty.data.layout import SplitData, read_split
from vse_infty.data.loaders import make_train_loader, set_epoch
from vse_infty.data.transforms import build_transform
from vse_infty.engine import (
    EmbeddingWarmup,
    evaluate,
    make_optimizer,
    set_epoch_lr,
    train_one_epoch,
    upstream_steps_per_epoch,
)
from vse_infty.model.build import build_model, build_tokenizer
from vse_infty.model.loss import ContrastiveLoss
from vse_infty.reporting import (
    backbone_name,
    dataset_name,
    make_result,
    metrics_line,
    peak_memory_mb,
    result_table,
    split_name,
)

log = logging.getLogger("vse_infty")


# ----------------------------------------------------------------------------------------------------------- setup
def load_split(config: TrainConfig, split: str, max_images: int | None = None) -> SplitData:
    """Read ``split`` of ``data.root`` for the configured dataset and image source (every file validated)."""
    return read_split(config.data.root, config.data.dataset, split, config.model.image_source, max_images=max_images)


def transform_for(config: TrainConfig, train: bool) -> Any:
    """Upstream raw-image transform at ``model.input_size``; ``None`` for precomputed features."""
    if config.model.image_source == "precomp":
        return None
    return build_transform(config.model.input_size, train=train)


def is_fold5(dataset: str, split: str) -> bool:
    """COCO ``testall`` is evaluated as 5 folds of 1K (+ 5K), as upstream ``evalrank(fold5=True)``."""
    return (dataset, split) == ("coco", "testall")


def per_process_batch(config: TrainConfig, info: DistInfo) -> int:
    if config.data.batch_size % info.world_size:
        raise ConfigError(f"data.batch_size={config.data.batch_size} (the global batch) is not divisible by the "
                          f"{info.world_size} processes; expected a multiple of WORLD_SIZE")
    return config.data.batch_size // info.world_size


def _evaluate(model: nn.Module, data: SplitData, config: TrainConfig, tokenizer: Any, device: torch.device,
              amp: bool, info: DistInfo, split: str, progress: bool, confidence: bool = False) -> tuple[dict, dict]:
    return evaluate(model, data, tokenizer, transform_for(config, False), batch_size=config.data.eval_batch_size,
                    device=device, dataset=config.data.dataset, split=split,
                    fold5=is_fold5(config.data.dataset, split), amp=amp, progress=progress, info=info,
                    max_length=config.data.max_length, workers=config.data.num_workers, confidence=confidence)


def confidence_labels(model: nn.Module) -> dict[str, list[str]]:
    """Names of UniPT's default target layers: the CNN stages but the last; the embedding output and every text
    layer but the last (a label list whose length differs from the plotted values is not used)."""
    labels: dict[str, list[str]] = {}
    names = getattr(model.image_encoder, "layer_names", None)
    if names:
        labels["image"] = list(names[:-1])
    layers = getattr(getattr(model.text_encoder, "backbone", None), "config", None)
    if layers is not None and hasattr(layers, "num_hidden_layers"):
        labels["text"] = ["emb", *(str(i) for i in range(1, int(layers.num_hidden_layers)))]
    return labels


def _payload(model: nn.Module, config: TrainConfig, optimizer: torch.optim.Optimizer,
             scaler: torch.amp.GradScaler | None, epoch: int, global_step: int, best: dict, history: list,
             elapsed: float, extra: dict, rng_per_rank: list) -> dict[str, Any]:
    return {"format": FORMAT, "epoch": epoch, "global_step": global_step, "method": config.method.name,
            "config": config.to_dict(), **trainable_state(model), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None, "rng": capture_rng(),
            "rng_per_rank": rng_per_rank, "best": dict(best), "history": list(history), "extra": dict(extra),
            "elapsed_s": elapsed}


# ------------------------------------------------------------------------------------------------------- training
def run_training(config: TrainConfig) -> RunResult | None:
    """Train, validate every epoch, test the best weights; returns the result (None if stopped by run.stop_after)."""
    with distributed_run() as info:
        return _train(config, info)


def _train(config: TrainConfig, info: DistInfo) -> RunResult | None:
    started = time.time()
    out, device, amp = start_run(log, config, info)
    progress = config.run.progress and info.is_main
    d = config.data
    batch = per_process_batch(config, info)
    test_split = d.resolved_test_split()

    train_data = load_split(config, d.train_split)
    val_data = load_split(config, d.val_split, d.val_max_images)
    test_data = load_split(config, test_split) if config.run.final_test else None
    log.info("data %s: train %d images / %d captions, %s %d images, %s %s", d.root, train_data.n_images,
             train_data.n_captions, d.val_split, val_data.n_images, test_split,
             f"{test_data.n_images} images" if test_data is not None else "not evaluated (run.final_test=false)")

    seed_everything(config.run.seed)  # the same initial weights on every process
    tokenizer = build_tokenizer(config.model)
    model = build_model(config.model, config.method, device=device)
    seed_everything(config.run.seed + info.rank)
    params = count_parameters(model)
    log.info("method %s\n%s", config.method.name, params.table(f"{backbone_name(config.model)} + "
                                                               f"{config.method.name}"))

    try:
        train_loader = make_train_loader(train_data, tokenizer, transform_for(config, True), batch,
                                         max_length=d.max_length, seed=config.run.seed, workers=d.num_workers,
                                         dist_info=info, pin_memory=device.type == "cuda")
    except ValueError as exc:
        raise ConfigError(f"data.batch_size={d.batch_size}: {exc}") from None
    upstream_steps = upstream_steps_per_epoch(len(train_data.captions), d.batch_size)
    optimizer = make_optimizer(model, config.optim)
    warmup = EmbeddingWarmup(model, config.optim.embedding_warmup_epochs)
    clip_params = [p for g in optimizer.param_groups for p in g["params"]]
    scaler = torch.amp.GradScaler("cuda") if amp else None
    loss_fn = ContrastiveLoss(margin=config.optim.margin)
    log.info("AdamW groups: %s; %d steps per epoch of %d per process x %d", ", ".join(
        f"{g['name']} ({sum(p.numel() for p in g['params']):,} params, lr {g['base_lr']:.3g})"
        for g in optimizer.param_groups), len(train_loader), batch, info.world_size)

    start_epoch, history, extra, elapsed_before = 0, [], {}, 0.0
    best: dict[str, Any] = {"rsum": -math.inf, "epoch": None, "metrics": {}, "confidence": {}}
    resume = resume_path(config.run.resume, out)
    if resume is not None:
        payload = read_checkpoint(resume)
        if payload["method"] != config.method.name:
            raise TrainCheckpointError(f"{resume}: trained with method {payload['method']!r}, this run uses "
                                       f"{config.method.name!r}; use another run.output_dir or run.resume=none")
        load_trainable_state(model, payload, str(resume))
        configured = [(g["base_lr"], g["weight_decay"]) for g in optimizer.param_groups]
        optimizer.load_state_dict(payload["optimizer"])
        for group, (base_lr, weight_decay) in zip(optimizer.param_groups, configured):  # the config decides
            group["base_lr"], group["weight_decay"] = base_lr, weight_decay
        if scaler is not None and payload.get("scaler"):
            scaler.load_state_dict(payload["scaler"])
        per_rank = payload.get("rng_per_rank") or []
        restore_rng(per_rank[info.rank] if len(per_rank) == info.world_size else payload["rng"])
        start_epoch, best, history = payload["epoch"] + 1, payload["best"], payload["history"]
        extra, elapsed_before = dict(payload.get("extra", {})), float(payload.get("elapsed_s", 0.0))
        log.info("resumed from %s (epoch %d done, best validation rsum %.2f at epoch %s)", resume, payload["epoch"],
                 best["rsum"], best["epoch"])
    elif config.run.eval_before:
        metrics, _ = _evaluate(model, val_data, config, tokenizer, device, amp, info, d.val_split, progress)
        extra["val_before"] = metrics
        log.info("before training, %s: %s", d.val_split, metrics_line(metrics))
        if test_data is not None:
            metrics, _ = _evaluate(model, test_data, config, tokenizer, device, amp, info, test_split, progress)
            extra["test_before"] = metrics
            log.info("before training, %s: %s", test_split, metrics_line(metrics))

    stopped = False
    for epoch in range(start_epoch, config.optim.epochs):
        if config.run.stop_after is not None and epoch - start_epoch >= config.run.stop_after:
            log.info("stopping after %d epoch(s) (run.stop_after); the same command resumes", config.run.stop_after)
            stopped = True
            break
        set_epoch(train_loader, epoch)
        set_epoch_lr(optimizer, epoch, config.optim)
        warmup.apply(epoch)
        wrapped = _wrap(model, device, info)
        stats = train_one_epoch(wrapped, train_loader, optimizer, loss_fn, epoch, optim=config.optim,
                                upstream_steps=upstream_steps, device=device, scaler=scaler, amp=amp,
                                clip_params=clip_params, info=info, progress=progress,
                                log_every=config.run.log_every)
        row: dict[str, Any] = {"epoch": epoch, **stats}
        improved = False
        if (epoch + 1) % config.run.eval_every == 0 or epoch + 1 == config.optim.epochs:
            metrics, confidence = _evaluate(model, val_data, config, tokenizer, device, amp, info, d.val_split,
                                            progress, confidence=True)
            row.update(val_rsum=metrics["rsum"], val_i2t_r1=metrics["i2t_r1"], val_t2i_r1=metrics["t2i_r1"])
            log.info("epoch %d %s: %s", epoch, d.val_split, metrics_line(metrics))
            improved = metrics["rsum"] > best["rsum"]
            if improved:
                best = {"rsum": metrics["rsum"], "epoch": epoch, "metrics": metrics, "confidence": confidence}
        history.append(row)
        log.info("epoch %d: loss %.4f, lr %.3g, %s negatives, %.0f s%s", epoch, stats["loss"], stats["lr"],
                 "hardest" if stats["max_violation"] else "all", stats["seconds"],
                 " (new best)" if improved else "")
        rng_per_rank = gather_lists([capture_rng()], info)
        if info.is_main:
            payload = _payload(model, config, optimizer, scaler, epoch, (epoch + 1) * len(train_loader), best,
                               history, elapsed_before + time.time() - started, extra, rng_per_rank)
            if improved:
                save_checkpoint(out / BEST, payload)
            save_checkpoint(out / LAST, payload)
        barrier(info)
    warmup.restore()
    if stopped:
        return None

    if info.is_main and best["confidence"]:
        path = plot_confidences(best["confidence"], out / "confidence.png",
                                f"UniPT mean confidence per layer, {d.val_split} split, epoch {best['epoch']}",
                                confidence_labels(model))
        log.info("UniPT mean confidence per layer (%s, epoch %s): %s; wrote %s", d.val_split, best["epoch"],
                 {k: [round(v, 3) for v in vs] for k, vs in best["confidence"].items()}, path)
    if test_data is not None:
        best_file = out / BEST
        if best_file.is_file():
            load_trainable_state(model, read_checkpoint(best_file), str(best_file))
        metrics, _ = _evaluate(model, test_data, config, tokenizer, device, amp, info, test_split, progress)
        split = split_name(d.dataset, test_split, is_fold5(d.dataset, test_split))
        evaluated = test_data
    else:
        metrics, split, evaluated = best["metrics"], d.val_split, val_data
    extra.update({"best_epoch": best["epoch"], "val_rsum_best": best["rsum"], "val_split": d.val_split,
                  "test_split": test_split if test_data is not None else None, "history": history,
                  "confidence": best["confidence"], "world_size": info.world_size, "config": config.to_dict(),
                  "num_images": evaluated.n_images, "num_captions": evaluated.n_captions,
                  "param_groups": params.to_dict()["groups"]})
    result = make_result(dataset=dataset_name(d.dataset), split=split, method=config.method.name,
                         backbone=backbone_name(config.model), metrics=metrics, trainable=params.trainable,
                         total=params.total, seed=config.run.seed,
                         wall_time_s=elapsed_before + time.time() - started, peak_mb=peak_memory_mb(device),
                         extra=extra)
    if info.is_main:
        result.write(out / "result.json")
        log.info("results (%s)\n%s%s", out / "result.json", metrics_line(metrics), "\n" + result_table(result))
    return result


def _wrap(model: nn.Module, device: torch.device, info: DistInfo) -> nn.Module:
    """DDP around the model under torchrun (rebuilt each epoch: the trainable set may change with the warm-up)."""
    if not info.enabled:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)


# ----------------------------------------------------------------------------------------------------- evaluation
def run_evaluation(checkpoint: str | Path, overrides: list[str] | None = None, split: str | None = None,
                   output: str | Path | None = None) -> RunResult:
    """Evaluate a training checkpoint (its config, with ``overrides``) on ``split`` (default: the test split)."""
    with distributed_run() as info:
        return _evaluate_checkpoint(Path(checkpoint), overrides or [], split, output, info)


def _evaluate_checkpoint(checkpoint: Path, overrides: list[str], split: str | None, output: str | Path | None,
                         info: DistInfo) -> RunResult:
    started = time.time()
    payload = read_checkpoint(checkpoint)
    config = from_dict(apply_overrides(payload["config"], ["run.resume=none", *overrides]),
                       f"{checkpoint} (config)")
    _, device, amp = start_run(log, config, info, write_config=False, log_file=None, seed_per_rank=False)
    split = split or config.data.resolved_test_split()
    data = load_split(config, split)
    seed_everything(config.run.seed)  # the same random init as the training run for towers without weights
    model = build_model(config.model, config.method, device=device)
    load_trainable_state(model, payload, str(checkpoint))
    params = count_parameters(model)
    metrics, confidence = _evaluate(model, data, config, build_tokenizer(config.model), device, amp, info, split,
                                    config.run.progress and info.is_main, confidence=True)
    result = make_result(dataset=dataset_name(config.data.dataset), split=split_name(config.data.dataset, split,
                                                                                    is_fold5(config.data.dataset,
                                                                                             split)),
                         method=config.method.name, backbone=backbone_name(config.model), metrics=metrics,
                         trainable=params.trainable, total=params.total, seed=config.run.seed,
                         wall_time_s=time.time() - started, peak_mb=peak_memory_mb(device),
                         extra={"checkpoint": str(checkpoint), "checkpoint_epoch": payload["epoch"],
                                "evaluated_split": split, "num_images": data.n_images,
                                "num_captions": data.n_captions, "confidence": confidence,
                                "config": config.to_dict()})
    if info.is_main:
        path = Path(output) if output is not None else checkpoint.parent / f"eval-{split}.json"
        result.write(path)
        print(metrics_line(metrics))
        print(result_table(result))
        print(f"wrote {path}")
    return result
