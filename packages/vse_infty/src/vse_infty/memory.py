"""Peak memory and time of one VSE-infty training step (forward, VSE++ loss, backward, clipping, AdamW step).

Method (:mod:`peft_core.memory`, shared with the benchmark suite): the model is built with random weights (local
``backbone_weights`` / ``vse_checkpoint`` are not read; the architecture is what matters), ``warmup_steps`` steps run
first (optimizer state allocated, kernels chosen), then the probe's window covers one more step. CPU: the kernel's
resident-set high-water mark (``/proc/self/clear_refs`` + ``VmHWM``); CUDA: ``torch.cuda.max_memory_allocated``.
``peak_mb`` is the absolute peak during the step (weights, optimizer state, gradients, activations), ``step_mb`` what
the step added on top of the memory held before it. For numbers that other work in the process cannot disturb, use
:func:`measure_in_subprocess` (one fresh Python process per measurement), as ``vse-infty memory`` does.

    measure_train_step(ModelConfig(), MethodConfig(name="unipt"), batch_size=8, input_size=512, device="cuda")
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from typing import Any

import torch

from vse_infty.model.config import MethodConfig, ModelConfig

MB = 2**20
UPSTREAM_REGIONS = 36
"""Regions per image of the upstream precomputed features (bottom-up attention, 36 x 2048)."""


def _step(model, batch, loss_fn, optimizer, params, grad_clip: float, amp: bool, device: torch.device) -> float:
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type=device.type, enabled=amp and device.type == "cuda"):
        img_emb, cap_emb = model(batch)
        loss = loss_fn(img_emb.float(), cap_emb.float())
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    return float(loss.detach())


def measure_train_step(
    model_cfg: ModelConfig,
    method_cfg: MethodConfig,
    batch_size: int = 2,
    input_size: int | None = None,
    device: str | torch.device = "cpu",
    *,
    seq_len: int = 32,
    warmup_steps: int = 1,
    amp: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Build the model (random weights) and measure one training step in this process; memory in MiB.

    Returns ``method``, ``device``, ``batch_size``, ``input_size``, ``seq_len``, ``trainable``, ``total``,
    ``before_mb``, ``peak_mb``, ``step_mb``, ``step_s``, ``loss`` and ``probe`` (the measuring method).
    """
    from peft_core.memory import make_probe

    from vse_infty.model.build import build_model
    from vse_infty.model.loss import ContrastiveLoss
    from vse_infty.testing import random_batch

    if batch_size < 2:
        raise ValueError(f"batch_size={batch_size} is not allowed; the hinge loss needs negatives (>= 2)")
    device = torch.device(device)
    cfg = dataclasses.replace(model_cfg, backbone_weights=None, vse_checkpoint=None,
                              input_size=input_size or model_cfg.input_size)
    torch.manual_seed(seed)
    model = build_model(cfg, method_cfg, device=device)
    model.train()
    vocab = int(model.text_encoder.backbone.config.vocab_size)
    batch = random_batch(cfg, batch_size, seq_len=seq_len, seed=seed, vocab_size=vocab, regions=UPSTREAM_REGIONS)
    batch = {k: v.to(device) for k, v in batch.items()}
    params = model.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=5e-4, weight_decay=1e-4)
    loss_fn = ContrastiveLoss(margin=0.2, max_violation=True)
    for _ in range(warmup_steps):
        _step(model, batch, loss_fn, optimizer, params, 2.0, amp, device)
    optimizer.zero_grad(set_to_none=True)
    probe = make_probe(device)
    before = probe.current()
    probe.start_window()
    start = time.perf_counter()
    loss = _step(model, batch, loss_fn, optimizer, params, 2.0, amp, device)
    probe.sync()
    step_s = time.perf_counter() - start
    peak = probe.peak()
    return {
        "method": method_cfg.name,
        "backbone": cfg.backbone if cfg.image_source == "backbone" else "precomp",
        "device": str(device),
        "batch_size": batch_size,
        "input_size": cfg.input_size,
        "seq_len": seq_len,
        "amp": bool(amp and device.type == "cuda"),
        "trainable": sum(p.numel() for p in params),
        "total": sum(p.numel() for p in model.parameters()),
        "before_mb": before / MB,
        "peak_mb": peak / MB,
        "step_mb": (peak - before) / MB,
        "step_s": step_s,
        "loss": loss,
        "probe": probe.method,
    }


def measure_in_subprocess(model_cfg: ModelConfig, method_cfg: MethodConfig, batch_size: int = 2,
                          input_size: int | None = None, device: str = "cpu", **options: Any) -> dict[str, Any]:
    """:func:`measure_train_step` in a fresh Python process (``python -m vse_infty.memory``)."""
    from peft_core.memory import run_in_fresh_process

    spec = {"model": dataclasses.asdict(model_cfg), "method": dataclasses.asdict(method_cfg),
            "batch_size": batch_size, "input_size": input_size, "device": str(device), "options": options}
    return run_in_fresh_process("vse_infty.memory", spec, f"method {method_cfg.name!r}")


def _main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m vse_infty.memory '<json: model, method, batch_size, input_size, device, options>'",
              file=sys.stderr)
        return 2
    spec = json.loads(argv[0])
    result = measure_train_step(ModelConfig(**spec["model"]), MethodConfig(**spec["method"]), spec["batch_size"],
                                spec.get("input_size"), spec.get("device", "cpu"), **spec.get("options", {}))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
