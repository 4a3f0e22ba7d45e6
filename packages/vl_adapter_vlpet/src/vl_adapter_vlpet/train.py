"""``vl-pet train`` / ``vl-pet eval``: the multitask training run and the evaluation of a checkpoint.

Run (upstream HenryHZY/VL-PET@7430cad ``src/multitask.py``, ``src/multitask_video.py``, ``src/trainer_base.py``):

1. model (:func:`vl_adapter_vlpet.models.build_model`: VL-BART / VL-T5 + the method from peft_core), datasets of
   every task (``train`` / ``val`` splits, :data:`vl_adapter_vlpet.config.UPSTREAM_SPLITS`), the round-robin
   :class:`~vl_adapter_vlpet.data.MultitaskLoader`;
2. AdamW over the trainable parameters (weight decay except on ``optim.no_decay`` names), linear warm-up over
   ``int(warmup_ratio * steps)`` then linear decay to 0 (the factor of transformers'
   ``get_linear_schedule_with_warmup``, :func:`~vl_adapter_vlpet.engine.linear_schedule`), one step per batch,
   gradient clipping, AMP on CUDA, torchrun DDP;
3. every ``eval_every`` epochs: generation on each task's validation split, the task metrics and their average;
   ``checkpoint-last.pt`` every epoch and ``checkpoint-best.pt`` when the average improves (atomic writes);
4. the test split of every task with the best weights (``run.test_checkpoint=last``: the last weights, upstream's
   image-text behaviour), predictions, ``results/<dataset>.json`` per task + ``results/average.json``
   (``peft_core.results.RunResult``), a table; optionally gate statistics (``run.store_gates``).

Logs: ``log.txt``, ``history.json`` (one row per epoch), TensorBoard (``tensorboard/``, ``run.tensorboard``), wandb
only with ``run.wandb=true``. Running the same command again resumes from ``checkpoint-last.pt`` (bit-exact on the
CPU). Upstream bugs not reproduced: the test used the last epoch (``self.save("LAST")`` then test), ``wandb.init``
ran unconditionally, ``--local_rank`` was required (no single-process run), and there was no resume.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from peft_core.io import atomic_write_text, load_tensor_file
from peft_core.model import adapter_parameters
from peft_core.results import RunResult
from peft_core.runtime.checkpointing import resume_path
from peft_core.runtime.distributed import DistInfo, barrier, distributed_run, gather_lists
from peft_core.runtime.session import start_run
from torch import nn

from vl_adapter_vlpet.checkpointing import (
    BEST,
    FORMAT,
    LAST,
    TrainCheckpointError,
    capture_rng,
    load_trainable_state,
    read_checkpoint,
    restore_rng,
    save_payload,
    trainable_state,
)
from vl_adapter_vlpet.config import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    from_dict,
    load_config,
    normalize_overrides,
)
from vl_adapter_vlpet.engine import generation_kwargs, linear_schedule, predict, train_one_epoch
from vl_adapter_vlpet.reporting import make_results, peak_memory_mb, results_table, selection_score

log = logging.getLogger("vl_adapter_vlpet")


# ---------------------------------------------------------------------------------------------------------- setup
@dataclass
class Session:
    """What one process of a run holds."""

    config: TrainConfig
    info: DistInfo
    device: torch.device
    amp: bool
    out: Path
    bundle: Any
    model: nn.Module
    tokenizer: Any
    stores: dict[tuple[str, str], Any] = field(default_factory=dict)

    @property
    def progress(self) -> bool:
        return self.config.run.progress and self.info.is_main


def build_session(config: TrainConfig, info: DistInfo, out: Path, log_file: Path | None,
                  write_config: bool = False) -> Session:
    """Logging, seed, device (:func:`peft_core.runtime.session.start_run`) and the model of a run (``init_from``
    weights loaded)."""
    from vl_adapter_vlpet.models import build_model

    out, device, amp = start_run(log, config, info, out=out, write_config=write_config, log_file=log_file,
                                 quiet=config.run.quiet)
    if config.model.tokenizer is None and config.model.pretrained is None:
        raise ConfigError("model.tokenizer and model.pretrained are both null; expected a local tokenizer folder "
                          "(model.tokenizer) or a transformers checkpoint folder (model.pretrained) to read text")
    bundle = build_model(config.model, config.method, device="cpu", dropout=config.optim.dropout)
    if config.run.init_from is not None:
        load_init_weights(bundle.model, config.run.init_from)
    model = bundle.model.to(device)
    return Session(config, info, device, amp, out, bundle, model, bundle.tokenizer)


def load_init_weights(model: nn.Module, path: str | Path) -> None:
    """Initialise the VL model's own weights (not the method's) from ``path``: a full fine-tuning training
    checkpoint of this package (its ``model`` state) or a ``state_dict`` file (``.pt`` / ``.safetensors``) of the
    VL model. Every base tensor must be present."""
    path = Path(path)
    state = load_tensor_file(path, TrainCheckpointError, "weights file (run.init_from)")
    if path.suffix != ".safetensors" and isinstance(state, dict) and state.get("format") == FORMAT:
        if "model" not in state:
            raise TrainCheckpointError(f"{path}: a training checkpoint of a PETL method holds no full model; "
                                       "run.init_from expects a full fine-tuning checkpoint or a state dict")
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TrainCheckpointError(f"{path}: expected a state dict of tensors (run.init_from)")
    base = {k for k in model.state_dict() if ".petl." not in k}
    unexpected = sorted(set(state) - base)
    missing = sorted(base - set(state))
    if missing or unexpected:
        raise TrainCheckpointError(f"{path}: does not fit the VL model (missing {missing[:5]}, unexpected "
                                   f"{unexpected[:5]}); expected the weights of the same backbone configuration")
    model.load_state_dict(state, strict=False)
    log.info("initialised the VL model from %s", path)


def eval_batch_size(config: TrainConfig, task: str) -> int:
    """Per-task evaluation batch (upstream: the task's training batch, ``--valid_batch_size`` = batch size)."""
    from vl_adapter_vlpet.data import task_batch_size

    base = config.data.eval_batch_size or config.data.batch_size
    return task_batch_size(task, base, multitask=len(config.data.tasks) > 1)


def task_dataset(session: Session, task: str, role: str) -> Any:
    """The dataset of ``task`` for ``role`` (``train`` / ``val`` / ``test``), its feature ids checked."""
    from vl_adapter_vlpet.data import build_task_dataset, open_feature_store

    config = session.config
    split = config.data.split(task, role)
    reader = config.data.reader(config.model)
    key = (task, split)
    if key not in session.stores:
        session.stores[key] = open_feature_store(task, split, reader, feat_dim=config.model.feat_dim)
    dataset = build_task_dataset(task, split, reader, session.tokenizer, session.stores[key], train=role == "train",
                                 seed=config.run.seed)
    dataset.check_features()
    return dataset


def evaluate_split(session: Session, datasets: dict[str, Any], desc: str,
                   predictions_dir: Path | None = None) -> dict[str, dict[str, float]]:
    """Generate on every task's dataset and score it; ``{task: metrics}`` (tasks without references: ``{}``)."""
    from vl_adapter_vlpet.data import eval_loader
    from vl_adapter_vlpet.evaluation import evaluate_task

    config = session.config
    out: dict[str, dict[str, float]] = {}
    for task, dataset in datasets.items():
        loader = eval_loader(dataset, eval_batch_size(config, task), session.tokenizer, info=session.info,
                             num_workers=config.data.num_workers, pin_memory=session.device.type == "cuda")
        kwargs = generation_kwargs(task, config.model.num_beams, config.model.gen_max_length)
        predictions, references = predict(session.model, loader, session.tokenizer, kwargs, device=session.device,
                                          amp=session.amp, info=session.info, progress=session.progress,
                                          desc=f"{desc} {task}")
        if predictions_dir is not None and session.info.is_main:
            predictions_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(predictions_dir / f"{task}-{dataset.split}.json",
                              json.dumps(predictions, indent=1, sort_keys=True) + "\n")
        if all(ref is None for ref in references.values()):
            log.warning("%s %s/%s: no references (hidden test labels); predictions only", desc, task, dataset.split)
            out[task] = {}
            continue
        out[task] = evaluate_task(task, predictions, references)
    return out


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; no weight decay on names containing an ``optim.no_decay`` item."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if any(nd in name for nd in config.optim.no_decay) else decay).append(p)
    if not decay and not no_decay:
        raise ConfigError(f"method.preset={config.method.preset!r} leaves no trainable parameter")
    groups = [{"params": decay, "weight_decay": config.optim.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    beta1, beta2 = config.optim.adam_betas
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.optim.lr, eps=config.optim.adam_eps,
                             betas=(beta1, beta2))


class Loggers:
    """TensorBoard (``run.tensorboard``) and wandb (``run.wandb``) on the main process; no-ops elsewhere."""

    def __init__(self, config: TrainConfig, out: Path, info: DistInfo) -> None:
        self.writer = None
        self.wandb = None
        if not info.is_main:
            return
        if config.run.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tensorboard"))
        if config.run.wandb:
            try:
                import wandb
            except ImportError:
                raise ConfigError("run.wandb=true but wandb is not installed; install the 'wandb' extra "
                                  "(pip install 'vl-adapter-vlpet[wandb]') or set run.wandb=false") from None
            self.wandb = wandb.init(project=config.run.wandb_project, config=config.to_dict(), dir=str(out),
                                    name=out.name, resume="allow")

    def scalars(self, values: dict[str, float], step: int, prefix: str = "") -> None:
        numeric = {f"{prefix}{k}": float(v) for k, v in values.items() if isinstance(v, int | float)}
        if self.writer is not None:
            for key, value in numeric.items():
                self.writer.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(numeric, step=step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()


def _flat_metrics(metrics: dict[str, dict[str, float]], prefix: str) -> dict[str, float]:
    out = {f"{prefix}{task}/{name}": value for task, m in metrics.items() for name, value in m.items()}
    scored = {t: m for t, m in metrics.items() if m}
    if scored:
        out[f"{prefix}average"] = selection_score(scored)
    return out


# ------------------------------------------------------------------------------------------------------- training
def run_training(config: TrainConfig) -> dict[str, RunResult] | None:
    """Train, validate, test; returns the results by task (plus ``"average"``), or None when stopped by
    ``run.stop_after`` (the same command resumes)."""
    with distributed_run() as info:
        return _train(config, info)


def _warn_about_recipe(config: TrainConfig) -> None:
    from vl_adapter_vlpet.methods import METHODS

    recipe = METHODS[config.method.preset].recipe(config.model.backbone)
    if abs(config.optim.lr - recipe.lr) > 1e-12 or config.data.batch_size != recipe.batch_size:
        log.info("note: the upstream script of %s on %s uses lr %g and batch %d (this run: lr %g, batch %d); "
                 "configs/%s-%s.yaml holds the upstream recipe", config.method.preset, config.model.backbone,
                 recipe.lr, recipe.batch_size, config.optim.lr, config.data.batch_size, config.method.preset,
                 config.model.backbone.split("-")[0])
    if config.run.test_checkpoint == "best" and config.run.eval_every:
        same = [t for t in config.data.tasks if config.data.split(t, "val") == config.data.split(t, "test")]
        if same:
            log.warning("tasks %s validate on their test split (upstream GQA: testdev); the best checkpoint is "
                        "then chosen partly on test data; set data.splits to separate them", same)


def _train(config: TrainConfig, info: DistInfo) -> dict[str, RunResult] | None:
    from vl_adapter_vlpet.data import MultitaskLoader

    started = time.time()
    out = Path(config.run.output_dir)
    session = build_session(config, info, out, out / "log.txt", write_config=True)
    bundle = session.bundle
    log.info("method %s on %s\n%s", bundle.method, bundle.backbone, bundle.params.table(f"{bundle.backbone} + "
                                                                                        f"{bundle.method}"))
    _warn_about_recipe(config)

    tasks = config.data.tasks
    train_sets = {t: task_dataset(session, t, "train") for t in tasks}
    val_sets = {t: task_dataset(session, t, "val") for t in tasks}
    loader = MultitaskLoader(train_sets, config.data.batch_size, session.tokenizer, shuffle=True,
                             seed=config.run.seed, num_workers=config.data.num_workers,
                             pin_memory=session.device.type == "cuda", info=info)
    steps_per_epoch = loader.steps_per_epoch
    total_steps = steps_per_epoch * config.optim.epochs
    warmup = int(total_steps * config.optim.warmup_ratio)
    log.info("tasks %s, batches %s, %d steps per epoch, %d steps, %d warm-up", tasks, loader.batch_sizes,
             steps_per_epoch, total_steps, warmup)

    optimizer = make_optimizer(session.model, config)
    scheduler = linear_schedule(optimizer, warmup, total_steps)
    scaler = torch.amp.GradScaler("cuda") if session.amp else None
    wrapped: nn.Module = session.model
    if info.enabled:
        device_ids = [session.device.index] if session.device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(session.model, device_ids=device_ids,
                                                      find_unused_parameters=True)

    start_epoch, best, history, elapsed_before, extra = 0, {"score": None, "epoch": None}, [], 0.0, {}
    resume = resume_path(config.run.resume, out)
    if resume is not None:
        payload = read_checkpoint(resume)
        if (payload["method"], payload["backbone"]) != (bundle.method, bundle.backbone):
            raise TrainCheckpointError(f"{resume}: trained {payload['method']!r} on {payload['backbone']!r}, this "
                                       f"run is {bundle.method!r} on {bundle.backbone!r}; use another "
                                       "run.output_dir or run.resume=none")
        load_trainable_state(session.model, payload, str(resume))
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        if scaler is not None and payload.get("scaler"):
            scaler.load_state_dict(payload["scaler"])
        per_rank = payload.get("rng_per_rank") or []
        restore_rng(per_rank[info.rank] if len(per_rank) == info.world_size else payload["rng"])
        start_epoch, best, history = payload["epoch"] + 1, payload["best"], payload["history"]
        elapsed_before, extra = float(payload.get("elapsed_s", 0.0)), dict(payload.get("extra", {}))
        log.info("resumed from %s (epoch %d done, step %d)", resume, payload["epoch"], payload["global_step"])
    elif config.run.eval_before:
        extra["before"] = {"val": evaluate_split(session, val_sets, "val (before)")}
        if config.run.final_test:
            test_sets = {t: task_dataset(session, t, "test") for t in tasks}
            extra["before"]["test"] = evaluate_split(session, test_sets, "test (before)")
        log.info("before training: %s", extra["before"])

    loggers = Loggers(config, out, info)

    def on_step(step: int, values: dict[str, float]) -> None:
        if step % config.run.log_every == 0:
            loggers.scalars(values, step, "train/")

    stopped = False
    try:
        for epoch in range(start_epoch, config.optim.epochs):
            if config.run.stop_after is not None and epoch - start_epoch >= config.run.stop_after:
                log.info("stopping after %d epoch(s) (run.stop_after); the same command resumes",
                         config.run.stop_after)
                stopped = True
                break
            loader.set_epoch(epoch)
            stats = train_one_epoch(wrapped, loader, optimizer, scheduler, epoch=epoch, device=session.device,
                                    scaler=scaler, amp=session.amp, clip_grad_norm=config.optim.clip_grad_norm,
                                    global_step=epoch * steps_per_epoch, progress=session.progress,
                                    on_step=on_step, total=steps_per_epoch)
            row: dict[str, Any] = {"epoch": epoch, **stats}
            improved = False
            every = config.run.eval_every
            if every and ((epoch + 1) % every == 0 or epoch + 1 == config.optim.epochs):
                val = evaluate_split(session, val_sets, f"val {epoch}")
                row["val"] = val
                scored = {t: m for t, m in val.items() if m}
                if scored:
                    row["val_score"] = selection_score(scored)
                    improved = best["score"] is None or row["val_score"] > best["score"]
                    if improved:
                        best = {"score": row["val_score"], "epoch": epoch, "val": val}
                loggers.scalars(_flat_metrics(val, "val/"), (epoch + 1) * steps_per_epoch)
            loggers.scalars({k: v for k, v in stats.items() if k.startswith("loss")}, (epoch + 1) * steps_per_epoch,
                            "epoch/")
            history.append(row)
            log.info("epoch %d: %s", epoch, _describe(row))
            rng_per_rank = gather_lists([capture_rng()], info)
            if info.is_main:
                payload = {
                    "format": FORMAT, "epoch": epoch, "global_step": (epoch + 1) * steps_per_epoch,
                    "method": bundle.method, "backbone": bundle.backbone, "config": config.to_dict(),
                    **trainable_state(session.model, bundle.full), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                    "rng": capture_rng(), "rng_per_rank": rng_per_rank, "best": dict(best), "history": list(history),
                    "extra": extra, "elapsed_s": elapsed_before + time.time() - started,
                }
                save_payload(out, payload, improved)
                atomic_write_text(out / "history.json", json.dumps(history, indent=1) + "\n")
            barrier(info)
    finally:
        loggers.close()
    if stopped:
        return None
    return _finish(session, best, history, extra, elapsed_before + time.time() - started)


def _describe(row: dict[str, Any]) -> str:
    parts = [f"loss {row['loss']:.4f}", f"lr {row['lr']:.3g}", f"steps {row['steps']}"]
    for task, metrics in row.get("val", {}).items():
        parts += [f"{task}/{k} {v:.2f}" for k, v in metrics.items()]
    if "val_score" in row:
        parts.append(f"val average {row['val_score']:.2f}")
    return ", ".join(parts)


def _finish(session: Session, best: dict[str, Any], history: list, extra: dict[str, Any],
            elapsed: float) -> dict[str, RunResult]:
    """Test with the chosen weights, write results (and gates); returns the results."""
    config, out, info = session.config, session.out, session.info
    chosen = BEST if config.run.test_checkpoint == "best" and (out / BEST).is_file() else LAST
    if (out / chosen).is_file():
        load_trainable_state(session.model, read_checkpoint(out / chosen), str(out / chosen))
    extra.update({"best_epoch": best.get("epoch"), "val_score_best": best.get("score"), "tested": chosen,
                  "history": history, "world_size": info.world_size, "config": config.to_dict()})
    if not config.run.final_test:
        metrics = best.get("val") or {}
        splits = {t: config.data.split(t, "val") for t in metrics}
    else:
        test_sets = {t: task_dataset(session, t, "test") for t in config.data.tasks}
        metrics = evaluate_split(session, test_sets, "test", out / "predictions")
        splits = {t: d.split for t, d in test_sets.items()}
    results = _write_results(session, metrics, splits, elapsed, extra, out / "results")
    if config.run.store_gates:
        write_gates(session, out)
    return results


def _write_results(session: Session, metrics: dict[str, dict[str, float]], splits: dict[str, str], elapsed: float,
                   extra: dict[str, Any], folder: Path) -> dict[str, RunResult]:
    bundle = session.bundle
    scored = {t: m for t, m in metrics.items() if m}
    adapters = sum(p.numel() for p in adapter_parameters(session.model).values() if p.requires_grad)
    results = make_results(scored, splits, method=bundle.method, backbone=bundle.backbone,
                           trainable=bundle.params.trainable, total=bundle.params.total, seed=session.config.run.seed,
                           wall_time_s=elapsed, peak_mb=peak_memory_mb(session.device),
                           extra={"adapter_params": adapters, **extra})
    if session.info.is_main and results:
        for result in results.values():
            result.write(folder / f"{result.dataset}.json")
        log.info("results (%s)\n%s", folder, results_table(results))
    return results


def write_gates(session: Session, out: Path) -> list[Path]:
    """``gates.json`` / ``gates.png`` of the current weights on every task's validation split."""
    from vl_adapter_vlpet.data import eval_loader
    from vl_adapter_vlpet.gates import collect_gate_statistics, gate_sites, write_gate_report

    if not gate_sites(session.model):
        log.warning("run.store_gates: method %s has no VL-PET gate; no gate statistics", session.bundle.method)
        return []
    config = session.config
    stats = {}
    for task in config.data.tasks:
        dataset = task_dataset(session, task, "val")
        loader = eval_loader(dataset, eval_batch_size(config, task), session.tokenizer, info=session.info)
        stats[task] = collect_gate_statistics(session.model, loader, session.device, config.run.gate_batches,
                                              gather=lambda items: gather_lists(items, session.info))
    if not session.info.is_main:
        return []
    meta = {"method": session.bundle.method, "backbone": session.bundle.backbone,
            "title": f"VL-PET gates: {session.bundle.method} on {session.bundle.backbone} (validation splits)",
            "splits": {t: config.data.split(t, "val") for t in config.data.tasks}}
    paths = write_gate_report(stats, out, meta)
    log.info("gate statistics: %s", ", ".join(map(str, paths)))
    return paths


# ----------------------------------------------------------------------------------------------------- evaluation
def run_evaluation(checkpoint: str | Path | None, overrides: list[str] | None = None, split: str = "test",
                   output: str | Path | None = None, config_file: str | Path | None = None) -> dict[str, RunResult]:
    """Evaluate on every task's ``split`` role (``test`` or ``val``) either a training checkpoint of this package
    (its config, with ``overrides``) or, with ``checkpoint=None``, the model a config builds (``config_file`` and
    ``overrides``; e.g. an upstream ``LAST.pth`` in ``model.upstream_checkpoint``). Writes
    ``<output>/results/*.json`` and predictions; default output: ``eval-<split>`` beside the checkpoint, or in
    ``run.output_dir``."""
    if split not in ("test", "val"):
        raise ConfigError(f"--split {split!r} is not allowed; expected 'test' or 'val'")
    with distributed_run() as info:
        if checkpoint is None:
            config = load_config(config_file, overrides)
            return _evaluate(config, None, split, output or Path(config.run.output_dir) / f"eval-{split}", info)
        payload = read_checkpoint(checkpoint)
        config = from_dict(apply_overrides(payload["config"], normalize_overrides(overrides or [])),
                           f"{checkpoint} (config)")
        out = output if output is not None else Path(checkpoint).parent / f"eval-{split}"
        return _evaluate(config, (Path(checkpoint), payload), split, out, info)


def _evaluate(config: TrainConfig, checkpoint: tuple[Path, dict[str, Any]] | None, split: str, output: str | Path,
              info: DistInfo) -> dict[str, RunResult]:
    started = time.time()
    config = replace(config, run=replace(config.run, resume="none"))
    out = Path(output)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    session = build_session(config, info, out, out / "log.txt")
    weights = (config.model.pretrained, config.run.init_from, config.model.upstream_checkpoint)
    if all(w is None for w in weights) and not (checkpoint is not None and session.bundle.full):
        log.warning("model.pretrained is not set: the frozen backbone is random; pass model.pretrained=PATH")
    extra: dict[str, Any] = {"config": config.to_dict()}
    if checkpoint is not None:
        path, payload = checkpoint
        load_trainable_state(session.model, payload, str(path))
        extra.update(checkpoint=str(path), checkpoint_epoch=payload["epoch"])
    datasets = {t: task_dataset(session, t, split) for t in config.data.tasks}
    metrics = evaluate_split(session, datasets, split, out / "predictions")
    results = _write_results(session, metrics, {t: d.split for t, d in datasets.items()}, time.time() - started,
                             extra, out / "results")
    if config.run.store_gates:
        write_gates(session, out)
    if info.is_main and results:
        print(results_table(results))
        print(f"wrote {out / 'results'}")
    return results


__all__ = ["Session", "build_session", "evaluate_split", "load_init_weights", "make_optimizer", "run_evaluation",
           "run_training", "task_dataset", "write_gates"]
