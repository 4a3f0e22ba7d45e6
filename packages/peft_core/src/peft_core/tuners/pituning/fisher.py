"""pi-Tuning step 2: diagonal empirical Fisher information of the trained expert's parameters as a task embedding.

Upstream: TencentARC/pi-Tuning @ 3b60701 ``OFA/task_emb.py`` + ``OFA/tasks/ofa_task.py:train_step(task_emb=True)``.
For each micro-batch ``b`` of one epoch upstream does ``model.zero_grad(); loss_b.backward()`` where ``loss_b`` is the
label-smoothed cross entropy *summed* over the micro-batch, then ``FIM[name] += grad ** 2`` and finally divides by
``len(epoch) * batch_size * world_size``::

    per_batch:   F[name] = 1/N * sum_b ( d/dtheta sum_{i in b} loss_i )**2
    per_sample:  F[name] = 1/N * sum_i ( d/dtheta loss_i )**2           (the textbook empirical Fisher diagonal)

``N`` is the number of samples seen. Differences from upstream, all deliberate:

* no optimizer step during the pass (upstream's trainer still stepped, so the experts drifted while being measured);
  gradients come from ``torch.autograd.grad``, so parameters and their ``.grad`` are left untouched;
* gradients are cast to float32 *before* squaring and accumulated in float32 (upstream squared fp16 gradients: those
  below ~1.7e-4 square to 0, those above 256 to inf); ``loss_scale`` additionally guards the fp16 backward itself;
* ``N`` counts the samples actually seen (upstream used ``steps * batch_size``, which overcounts a ragged last batch);
* the model runs in eval mode by default (dropout off: a deterministic embedding); ``train=True`` runs it as upstream;
* distributed: with ``torch.distributed`` initialised, the per-rank sums and sample counts are all-reduced (SUM)
  before dividing. Gradients must stay per-rank: pass the unwrapped module, or a DDP module (its ``no_sync`` is used).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from peft_core.io import atomic_write

MODES = ("per_batch", "per_sample")
FORMAT = "peft_core.pituning.fisher_embedding"
FORMAT_VERSION = 1
_META_KEY = "fisher_embedding"

LossFn = Callable[[nn.Module, Any], torch.Tensor]


@dataclass
class FisherEmbedding:
    """A task embedding: ``{param_name: float32 diagonal Fisher}`` plus how it was computed.

    ``num_samples`` is the normaliser ``N``; ``mode`` is ``"per_batch"`` or ``"per_sample"``; ``extra`` holds
    JSON-serialisable provenance (number of batches, loss scale, world size, task name, ...).
    """

    tensors: dict[str, torch.Tensor]
    num_samples: int
    mode: str
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r} is not allowed; expected one of {list(MODES)}")
        for name, t in self.tensors.items():
            if t.dtype != torch.float32:
                raise ValueError(f"Fisher tensor {name!r} has dtype {t.dtype}; expected torch.float32")

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def __len__(self) -> int:
        return len(self.tensors)

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    @property
    def names(self) -> list[str]:
        """Parameter names, in insertion order."""
        return list(self.tensors)

    def save(self, path: str | Path) -> None:
        """Write one ``.safetensors`` file, the metadata as JSON in its header; atomic (temp file + ``os.replace``)."""
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "num_samples": self.num_samples,
            "mode": self.mode,
            "extra": self.extra,
        }
        header = {_META_KEY: json.dumps(meta, sort_keys=True)}
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.tensors.items()}
        atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=header))

    @classmethod
    def load(cls, path: str | Path) -> FisherEmbedding:
        """Read a file written by :meth:`save`; ``ValueError`` when it is not a Fisher embedding file."""
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
        if _META_KEY not in header:
            raise ValueError(f"{path} is not a Fisher embedding file (no {_META_KEY!r} entry in its header)")
        meta = json.loads(header[_META_KEY])
        if meta.get("format") != FORMAT or meta.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(
                f"{path}: unsupported format {meta.get('format')!r} version {meta.get('format_version')!r}; "
                f"this release reads {FORMAT!r} up to version {FORMAT_VERSION}"
            )
        tensors = load_file(str(path))
        return cls(tensors=tensors, num_samples=int(meta["num_samples"]), mode=meta["mode"], extra=meta["extra"])


def _infer_batch_size(batch: Any) -> int | None:
    """Leading dimension of the first tensor found in ``batch`` (tensor, mapping or sequence, searched depth first)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() > 0 else None
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, list | tuple) else ()
    for v in values:
        n = _infer_batch_size(v)
        if n is not None:
            return n
    return None


def _no_sync(model: nn.Module) -> contextlib.AbstractContextManager:
    no_sync = getattr(model, "no_sync", None)
    return no_sync() if callable(no_sync) else contextlib.nullcontext()


@contextlib.contextmanager
def _fisher_pass_state(model: nn.Module, params: Mapping[str, nn.Parameter], train: bool) -> Iterator[None]:
    """Set the mode and ``requires_grad`` for the pass; restore all modules' modes, ``requires_grad`` and ``.grad``."""
    modes = {m: m.training for m in model.modules()}
    requires = {name: p.requires_grad for name, p in params.items()}
    grads = {name: p.grad for name, p in params.items()}
    try:
        model.train(train)
        for p in params.values():
            p.requires_grad_(True)
        yield
    finally:
        for m, was_training in modes.items():
            m.training = was_training
        for name, p in params.items():
            p.requires_grad_(requires[name])
            p.grad = grads[name]


def _all_reduce(acc: dict[str, torch.Tensor], seen: dict[str, bool], count: int, device: torch.device) -> int:
    """SUM the accumulators and the sample count over ranks, OR the "received a gradient" flags; returns the count."""
    names = sorted(acc)  # same collective order on every rank
    for name in names:
        dist.all_reduce(acc[name], op=dist.ReduceOp.SUM)
    total = torch.tensor([float(seen[n]) for n in names] + [float(count)], dtype=torch.float64, device=device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    for i, name in enumerate(names):
        seen[name] = bool(total[i] > 0)
    return int(total[-1].item())


def compute_fisher(
    model: nn.Module,
    batches: Iterable[Any],
    loss_fn: LossFn,
    params: Mapping[str, nn.Parameter] | None = None,
    mode: str = "per_batch",
    max_batches: int | None = None,
    progress: bool = True,
    *,
    train: bool = False,
    loss_scale: float = 1.0,
) -> FisherEmbedding:
    """Diagonal empirical Fisher information of ``params`` over ``batches`` (pi-Tuning task embedding).

    ``loss_fn(model, batch)`` returns either the loss *summed* over the micro-batch (a scalar; the batch size is then
    the leading dimension of the first tensor in ``batch``) or the per-sample losses, shape ``(B,)``. ``per_sample``
    mode needs the per-sample losses (one backward pass per sample over the shared graph: no cross-sample terms,
    so keep batch-norm out of train mode).

    ``per_batch``: ``F = 1/N sum_b (grad sum_{i in b} loss_i)**2`` (upstream); ``per_sample``:
    ``F = 1/N sum_i (grad loss_i)**2``; ``N`` = samples seen. Gradients are taken with ``torch.autograd.grad`` of
    ``loss * loss_scale``, cast to float32, divided by ``loss_scale`` and squared in float32.

    ``params`` defaults to every parameter with ``requires_grad``; an explicit mapping may name frozen parameters
    (enabled for the pass only). Parameters that never receive a gradient are dropped with a warning (upstream only
    kept parameters whose ``.grad`` was set). Nothing is stepped: parameters, their ``.grad``, ``requires_grad`` and
    every module's train/eval mode are as before on return. ``max_batches`` stops early; ``progress`` shows a tqdm
    bar (rank 0 only). See the module docstring for the differences from upstream and the distributed reduction.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not allowed; expected one of {list(MODES)}")
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches={max_batches!r} is not allowed; expected None or an integer >= 1")
    if not loss_scale > 0 or not math.isfinite(loss_scale):
        raise ValueError(f"loss_scale={loss_scale!r} is not allowed; expected a finite number > 0")
    if params is None:
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    params = dict(params)
    if not params:
        raise ValueError("no parameters to compute the Fisher information of (none requires grad and none given)")

    names, plist = list(params), list(params.values())
    acc = {n: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for n, p in params.items()}
    seen = dict.fromkeys(names, False)
    num_samples = num_batches = 0
    distributed = dist.is_available() and dist.is_initialized()
    show = progress and (not distributed or dist.get_rank() == 0)
    total = len(batches) if hasattr(batches, "__len__") else None
    if max_batches is not None:
        total = max_batches if total is None else min(total, max_batches)

    def accumulate(loss: torch.Tensor, retain_graph: bool) -> None:
        grads = torch.autograd.grad(loss * loss_scale, plist, retain_graph=retain_graph, allow_unused=True)
        for name, g in zip(names, grads):
            if g is not None:
                seen[name] = True
                acc[name].add_((g.detach().float() / loss_scale).square())

    with _fisher_pass_state(model, params, train), _no_sync(model):
        source = batches if max_batches is None else itertools.islice(batches, max_batches)
        bar = tqdm(source, total=total, desc=f"Fisher ({mode})", disable=not show, leave=False)
        for batch in bar:
            loss = loss_fn(model, batch)
            if loss.dim() == 0:
                if mode == "per_sample":
                    raise ValueError("mode='per_sample' needs loss_fn to return per-sample losses of shape (B,)")
                n = _infer_batch_size(batch)
                if n is None:
                    raise ValueError("cannot infer the batch size; make loss_fn return per-sample losses (B,)")
                accumulate(loss, retain_graph=False)
            elif loss.dim() == 1:
                n = loss.shape[0]
                if mode == "per_batch":
                    accumulate(loss.sum(), retain_graph=False)
                else:
                    for i in range(n):
                        accumulate(loss[i], retain_graph=i < n - 1)
            else:
                raise ValueError(f"loss_fn must return a scalar or a (B,) tensor; got shape {tuple(loss.shape)}")
            num_samples += n
            num_batches += 1
        bar.close()

    if distributed:
        num_samples = _all_reduce(acc, seen, num_samples, next(iter(acc.values())).device)
    if num_samples == 0:
        raise ValueError("no samples: batches was empty")
    unseen = [n for n in names if not seen[n]]
    if unseen:
        warnings.warn(f"dropped {len(unseen)} parameter(s) that never received a gradient: {unseen}", stacklevel=2)
    tensors = {n: (acc[n] / num_samples).cpu() for n in names if seen[n]}
    bad = [n for n, t in tensors.items() if not torch.isfinite(t).all()]
    if bad:
        warnings.warn(f"non-finite Fisher values (gradient overflow? try loss_scale < 1) in: {bad}", stacklevel=2)
    extra = {
        "num_batches": num_batches,
        "loss_scale": loss_scale,
        "train_mode": train,
        "world_size": dist.get_world_size() if distributed else 1,
    }
    return FisherEmbedding(tensors=tensors, num_samples=num_samples, mode=mode, extra=extra)
