"""Training and evaluation runs (``video-swin-vpetl train`` / ``eval``).

A training run: build the model (pre-trained Video Swin + recipe), SGD momentum 0.9 on the trainable parameters,
``lr = blr * batch * world / 256`` with per-iteration warm-up + cosine, one validation pass per epoch (centre clip,
centre crop), ``checkpoint-last.pt`` written atomically every epoch and ``checkpoint-best.pt`` (a copy) whenever
validation top-1 improves; finally the best weights are tested with clips x crops views and a ``result.json``
(``peft_core.results.RunResult``) is written next to ``log.txt``. ``run.resume=auto`` continues from
``checkpoint-last.pt`` (weights, optimizer, scaler, epoch, RNG states), bit-exactly on the CPU.

Upstream: bruceyo/V-PETL@661198dd38:main.py (AdaptFormer main_video.py), engine_finetune.py.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from peft_core import adapter_parameters
from peft_core.results import RunResult
from peft_core.runtime.checkpointing import resume_path
from peft_core.runtime.distributed import DistInfo, ShardSampler, barrier, distributed_run, gather_lists
from peft_core.runtime.session import start_run
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from video_swin_vpetl.builder import BuiltModel, build_model
from video_swin_vpetl.checkpointing import (
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
from video_swin_vpetl.config import ConfigError, TrainConfig, apply_overrides, from_dict
from video_swin_vpetl.data.datasets import ClipSpec, VideoDataset
from video_swin_vpetl.data.lists import NUM_CLASSES, VideoRecord, read_list
from video_swin_vpetl.engine import EvalResult, LrPlan, evaluate, train_one_epoch
from video_swin_vpetl.reporting import make_result, peak_memory_mb, result_table
from video_swin_vpetl.schedule import scaled_lr

log = logging.getLogger("video_swin_vpetl")


# ----------------------------------------------------------------------------------------------------------- setup
def clip_spec(config: TrainConfig) -> ClipSpec:
    d = config.data
    return ClipSpec(d.num_frames, d.sampling_rate, d.input_size, d.train_short_side, d.test_clips, d.test_crops,
                    d.backend)


def list_path(config: TrainConfig, name: str) -> Path:
    return Path(config.data.root) / name


def num_classes_for(config: TrainConfig, train_list: Path | None = None) -> int:
    """``model.num_classes``, else the dataset's class count, else 1 + the largest label of the train list."""
    if config.model.num_classes:
        return config.model.num_classes
    if config.data.dataset in NUM_CLASSES:
        return NUM_CLASSES[config.data.dataset]
    if train_list is None:
        raise ValueError(f"data.dataset={config.data.dataset!r} has no known class count; set model.num_classes")
    return 1 + max(r.label for r in read_list(train_list, video_root=config.data.video_root))


def eval_loader(records: list[VideoRecord], config: TrainConfig, mode: str, info: DistInfo,
                device: torch.device) -> DataLoader:
    dataset = VideoDataset(records, clip_spec(config), mode, seed=config.run.seed)
    return DataLoader(dataset, batch_size=config.run.eval_batch_size, sampler=ShardSampler(len(dataset), info),
                      num_workers=config.data.num_workers, pin_memory=device.type == "cuda",
                      generator=torch.Generator().manual_seed(config.run.seed))


def make_optimizer(model: nn.Module, config: TrainConfig, lr: float) -> torch.optim.SGD:
    """SGD on the trainable parameters; weight decay (if any) on matrices only, not on biases / norms."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": config.optim.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD([g for g in groups if g["params"]], lr=lr, momentum=config.optim.momentum)


# ---------------------------------------------------------------------------------------------------- checkpoints
def _payload(built: BuiltModel, config: TrainConfig, optimizer: torch.optim.Optimizer,
             scaler: torch.amp.GradScaler | None, epoch: int, global_step: int, best: dict, history: list,
             elapsed: float) -> dict[str, Any]:
    return {
        "format": FORMAT, "epoch": epoch, "global_step": global_step, "recipe": built.recipe.name,
        "config": config.to_dict(), **trainable_state(built.model, built.recipe.head, built.recipe.full),
        "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": capture_rng(), "best": dict(best), "history": list(history), "elapsed_s": elapsed,
    }


# ------------------------------------------------------------------------------------------------------- training
def run_training(config: TrainConfig) -> RunResult | None:
    """Train, validate every epoch, test the best weights; returns the result (None if stopped by run.stop_after)."""
    with distributed_run() as info:
        return _train(config, info)


def _train(config: TrainConfig, info: DistInfo) -> RunResult | None:
    started = time.time()
    out, device, amp = start_run(log, config, info)

    d = config.data
    num_classes = num_classes_for(config, list_path(config, d.train_list))
    train_records = read_list(list_path(config, d.train_list), num_classes=num_classes, video_root=d.video_root)
    val_records = read_list(list_path(config, d.val_list), num_classes=num_classes, video_root=d.video_root)
    test_records = (read_list(list_path(config, d.test_list), num_classes=num_classes, video_root=d.video_root)
                    if config.run.final_test else [])

    built = build_model(config, num_classes)
    model = built.model.to(device)
    log.info("recipe %s\n%s", built.recipe.name, built.params.table(f"{built.backbone_name} + {built.recipe.name}"))

    spec = clip_spec(config)
    train_set = VideoDataset(train_records, spec, "train", seed=config.run.seed)
    sampler = DistributedSampler(train_set, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                 seed=config.run.seed, drop_last=True)
    loader_gen = torch.Generator()
    train_loader = DataLoader(train_set, batch_size=config.optim.batch_size, sampler=sampler, drop_last=True,
                              num_workers=d.num_workers, pin_memory=device.type == "cuda", generator=loader_gen)
    if len(train_loader) == 0:
        raise ConfigError(f"{list_path(config, d.train_list)}: {len(train_records)} videos give no full batch of "
                          f"optim.batch_size={config.optim.batch_size} x {info.world_size} processes; lower it")
    val_loader = eval_loader(val_records, config, "val", info, device)

    lr = config.optim.lr if config.optim.lr is not None else scaled_lr(config.optim.blr, config.optim.batch_size,
                                                                       info.world_size)
    plan = LrPlan(lr, config.optim.min_lr, config.optim.warmup_epochs, config.optim.epochs)
    optimizer = make_optimizer(model, config, lr)
    scaler = torch.amp.GradScaler("cuda") if amp else None
    wrapped: nn.Module = model
    if info.enabled:
        device_ids = [device.index] if device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    source = ("optim.lr" if config.optim.lr is not None else
              f"blr {config.optim.blr:g} x batch {config.optim.batch_size} x world {info.world_size} / 256")
    log.info("lr %.6g (%s), %d steps per epoch", lr, source, len(train_loader))

    start_epoch, best, history, elapsed_before = 0, {"top1": -1.0, "top5": 0.0, "epoch": None}, [], 0.0
    extra: dict[str, Any] = {}
    resume = resume_path(config.run.resume, out)
    if resume is not None:
        payload = read_checkpoint(resume)
        if payload["recipe"] != built.recipe.name:
            raise TrainCheckpointError(f"{resume}: trained with recipe {payload['recipe']!r}, this run uses "
                                       f"{built.recipe.name!r}; use another run.output_dir or run.resume=none")
        load_trainable_state(model, payload, built.recipe.head, str(resume))
        optimizer.load_state_dict(payload["optimizer"])
        if scaler is not None and payload.get("scaler"):
            scaler.load_state_dict(payload["scaler"])
        per_rank = payload.get("rng_per_rank") or []
        restore_rng(per_rank[info.rank] if len(per_rank) == info.world_size else payload["rng"])
        start_epoch, best, history = payload["epoch"] + 1, payload["best"], payload["history"]
        elapsed_before = float(payload.get("elapsed_s", 0.0))
        extra.update(payload.get("extra", {}))
        log.info("resumed from %s (epoch %d done, best top-1 %.2f)", resume, payload["epoch"], best["top1"])
    elif config.run.eval_before:
        before = evaluate(model, val_loader, device=device, amp=amp, records=val_records, info=info,
                          progress=config.run.progress and info.is_main, desc="val (before)")
        extra["val_top1_before"], extra["val_top5_before"] = before.top1, before.top5
        log.info("before training: val top-1 %.2f top-5 %.2f", before.top1, before.top5)
        if config.run.final_test:
            before = evaluate(model, eval_loader(test_records, config, "test", info, device), device=device, amp=amp,
                              records=test_records, info=info, progress=config.run.progress and info.is_main,
                              desc="test (before)")
            extra["test_top1_before"], extra["test_top5_before"] = before.top1, before.top5
            log.info("before training: test top-1 %.2f top-5 %.2f", before.top1, before.top5)

    stopped = False
    for epoch in range(start_epoch, config.optim.epochs):
        if config.run.stop_after is not None and epoch - start_epoch >= config.run.stop_after:
            log.info("stopping after %d epoch(s) (run.stop_after); the same command resumes", config.run.stop_after)
            stopped = True
            break
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        loader_gen.manual_seed(config.run.seed * 100003 + epoch)
        stats = train_one_epoch(wrapped, train_loader, optimizer, plan, epoch, device=device, scaler=scaler, amp=amp,
                                records=train_records, progress=config.run.progress and info.is_main)
        row: dict[str, Any] = {"epoch": epoch, **stats}
        improved = False
        if (epoch + 1) % config.run.eval_every == 0 or epoch + 1 == config.optim.epochs:
            val = evaluate(model, val_loader, device=device, amp=amp, records=val_records, info=info,
                           progress=config.run.progress and info.is_main, desc=f"val {epoch}")
            row.update(val_top1=val.top1, val_top5=val.top5, val_videos=val.num_videos,
                       val_unreadable=len(val.unreadable))
            improved = val.top1 > best["top1"]
            if improved:
                best = {"top1": val.top1, "top5": val.top5, "epoch": epoch}
        history.append(row)
        log.info("epoch %d: %s", epoch, ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                   for k, v in row.items() if k != "epoch"))
        rng_per_rank = gather_lists([capture_rng()], info)  # every process's RNG state (drop path differs)
        if info.is_main:
            payload = _payload(built, config, optimizer, scaler, epoch, (epoch + 1) * len(train_loader), best,
                               history, elapsed_before + time.time() - started)
            payload["extra"], payload["rng_per_rank"] = extra, rng_per_rank
            if improved:
                save_checkpoint(out / BEST, payload)
            save_checkpoint(out / LAST, payload)
        barrier(info)
    if stopped:
        return None

    if config.run.final_test:
        best_file = out / BEST
        if best_file.is_file():
            load_trainable_state(model, read_checkpoint(best_file), built.recipe.head, str(best_file))
        test_loader = eval_loader(test_records, config, "test", info, device)
        evaluation = evaluate(model, test_loader, device=device, amp=amp, records=test_records, info=info,
                              progress=config.run.progress and info.is_main, desc="test")
        split = Path(d.test_list).stem
    else:
        evaluation = EvalResult(best["top1"], best["top5"], len(val_records), -1, -1, 1)
        split = Path(d.val_list).stem
    adapters = sum(p.numel() for p in adapter_parameters(model).values() if p.requires_grad)
    extra.update({"best_epoch": best["epoch"], "val_top1_best": best["top1"], "lr": lr, "history": history,
                  "adapter_params": adapters, "world_size": info.world_size, "config": config.to_dict(),
                  "pretrained": config.model.pretrained})
    result = make_result(dataset=d.dataset, split=split, method=built.recipe.name, backbone=built.backbone_name,
                         evaluation=evaluation, trainable=built.params.trainable, total=built.params.total,
                         seed=config.run.seed, wall_time_s=elapsed_before + time.time() - started,
                         peak_mb=peak_memory_mb(device), extra=extra)
    if info.is_main:
        result.write(out / "result.json")
        log.info("results (%s)\n%s", out / "result.json", result_table(result))
        for item in evaluation.unreadable:
            log.warning("unreadable video excluded from the counts: %s", item["error"])
    return result


# ----------------------------------------------------------------------------------------------------- evaluation
def run_evaluation(checkpoint: str | Path, overrides: list[str] | None = None, output: str | Path | None = None,
                   split: str = "test") -> RunResult:
    """Test a training checkpoint (its config, with ``overrides``) on ``split`` (``test`` multi-view or ``val``)."""
    with distributed_run() as info:
        return _evaluate(Path(checkpoint), overrides or [], output, split, info)


def _evaluate(checkpoint: Path, overrides: list[str], output: str | Path | None, split: str,
              info: DistInfo) -> RunResult:
    started = time.time()
    payload = read_checkpoint(checkpoint)
    config = from_dict(apply_overrides(payload["config"], overrides), f"{checkpoint} (config)")
    _, device, amp = start_run(log, config, info, write_config=False, log_file=None, seed_per_rank=False)
    d = config.data
    num_classes = num_classes_for(config, list_path(config, d.train_list))
    list_name = d.test_list if split == "test" else d.val_list
    records = read_list(list_path(config, list_name), num_classes=num_classes, video_root=d.video_root)
    full = "model" in payload
    built = build_model(config, num_classes, load_pretrained=not full)
    if not full and not config.model.pretrained:
        log.warning("model.pretrained is not set: the frozen backbone is random; pass model.pretrained=PATH")
    load_trainable_state(built.model, payload, built.recipe.head, str(checkpoint))
    model = built.model.to(device)
    evaluation = evaluate(model, eval_loader(records, config, split, info, device), device=device, amp=amp,
                          records=records, info=info, progress=config.run.progress and info.is_main, desc=split)
    adapters = sum(p.numel() for p in adapter_parameters(model).values() if p.requires_grad)
    result = make_result(dataset=d.dataset, split=Path(list_name).stem, method=built.recipe.name,
                         backbone=built.backbone_name, evaluation=evaluation, trainable=built.params.trainable,
                         total=built.params.total, seed=config.run.seed, wall_time_s=time.time() - started,
                         peak_mb=peak_memory_mb(device),
                         extra={"checkpoint": str(checkpoint), "checkpoint_epoch": payload["epoch"],
                                "adapter_params": adapters, "config": config.to_dict()})
    if info.is_main:
        path = Path(output) if output is not None else checkpoint.parent / f"eval-{split}.json"
        result.write(path)
        print(result_table(result))
        print(f"wrote {path}")
    return result
