"""One training epoch and one evaluation pass.

Training: cross-entropy on the valid clips of each batch (undecodable videos are left out and counted), lr set every
iteration (:mod:`video_swin_vpetl.schedule`), AMP + GradScaler on CUDA only, no gradient clipping (as upstream
bruceyo/V-PETL@661198dd38:engine_finetune.py:train_one_epoch). A non-finite loss stops the run with
:class:`NonFiniteLossError` naming the epoch, step and lr.

Evaluation: the logits of a video's views (clips x crops) are averaged, then top-1 / top-5 are counted over the
videos that decoded. Undecodable videos are listed and excluded from the counts (upstream ``compute_video_hmdb``
counted an exception as a correct prediction). Counts are summed over processes.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

import torch
from peft_core.runtime.distributed import DistInfo, gather_lists, sum_counts
from peft_core.runtime.session import check_finite
from torch import nn
from torch.nn import functional as F
from torch.optim import Optimizer
from torch.utils.data import DataLoader
from tqdm import tqdm

from video_swin_vpetl.data.lists import VideoRecord
from video_swin_vpetl.schedule import lr_at, set_lr

log = logging.getLogger("video_swin_vpetl")


@dataclass(frozen=True)
class LrPlan:
    lr: float
    min_lr: float
    warmup_epochs: float
    epochs: int

    def at(self, epoch: float) -> float:
        return lr_at(epoch, self.lr, self.min_lr, self.warmup_epochs, self.epochs)


@dataclass
class EvalResult:
    """Top-1 / top-5 (%) over ``num_videos`` decodable videos; ``unreadable`` lists ``{"path", "error"}``."""

    top1: float
    top5: float
    num_videos: int
    correct1: int
    correct5: int
    views: int
    unreadable: list[dict[str, str]] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        return {"top1": self.top1, "top5": self.top5}


def autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """fp16 autocast on CUDA when ``amp``; nothing on the CPU."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: Optimizer, plan: LrPlan, epoch: int, *,
                    device: torch.device, scaler: torch.amp.GradScaler | None, amp: bool, records: list[VideoRecord],
                    progress: bool = True) -> dict:
    """Train for one epoch; returns ``{"loss", "lr", "steps", "skipped_videos"}`` (loss averaged over steps)."""
    model.train()
    steps = len(loader)
    total_loss, done, lr = 0.0, 0, 0.0
    skipped: list[dict[str, str]] = []
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=not progress, leave=False, dynamic_ncols=True)
    for step, batch in enumerate(bar):
        lr = plan.at(epoch + step / steps)
        set_lr(optimizer, lr)
        valid = batch["valid"]
        skipped += [{"path": str(records[int(i)].path), "error": e}
                    for i, e, ok in zip(batch["index"], batch["error"], valid.tolist()) if not ok]
        if not valid.any():
            continue
        video = batch["video"][valid][:, 0].to(device, non_blocking=True)  # one view per training item
        label = batch["label"][valid].to(device, non_blocking=True)
        with autocast(device, amp):
            loss = F.cross_entropy(model(video), label)
        check_finite(loss, f"epoch {epoch}, step {step} (lr {lr:.3g})")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        total_loss += loss.item()
        done += 1
        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}")
    for item in skipped:
        log.warning("skipped undecodable training video %s", item["error"])
    return {"loss": total_loss / max(done, 1), "lr": lr, "steps": done, "skipped_videos": len(skipped)}


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, *, device: torch.device, amp: bool, records: list[VideoRecord],
             info: DistInfo, progress: bool = True, desc: str = "eval") -> EvalResult:
    """Average the logits of every video's views; top-1 / top-5 over the decodable videos (all processes)."""
    model.eval()
    correct1 = correct5 = count = 0
    views = 0
    unreadable: list[dict[str, str]] = []
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        valid = batch["valid"]
        for i, e, ok in zip(batch["index"], batch["error"], valid.tolist()):
            if not ok:
                unreadable.append({"path": str(records[int(i)].path), "error": e})
        if not valid.any():
            continue
        video = batch["video"][valid].to(device, non_blocking=True)  # (B, V, C, T, H, W)
        label = batch["label"][valid].to(device)
        b, views = video.shape[:2]
        with autocast(device, amp):
            logits = model(video.flatten(0, 1)).float().view(b, views, -1).mean(dim=1)
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        correct1 += int((top[:, 0] == label).sum())
        correct5 += int((top == label[:, None]).any(dim=-1).sum())
        count += b
    correct1, correct5, count = (int(v) for v in sum_counts([correct1, correct5, count], info, device))
    unreadable = gather_lists(unreadable, info)
    pct = (lambda c: 100.0 * c / count) if count else (lambda c: 0.0)
    return EvalResult(pct(correct1), pct(correct5), count, correct1, correct5, views, unreadable)
