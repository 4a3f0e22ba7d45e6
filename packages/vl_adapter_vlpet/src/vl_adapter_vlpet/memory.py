"""Memory and time of one training step of a method on VL-BART / VL-T5 (random weights, materialised).

One step = forward with labels, cross-entropy loss, backward, AdamW step over the trainable parameters, as a
training iteration of upstream ``src/multitask.py`` (no AMP: the upstream scripts do not pass ``--fp16``). The batch
is synthetic: ``text_len`` input tokens, ``n_vis_tokens`` visual tokens of ``feat_dim`` features with zero boxes (grid
features, as upstream), ``target_len`` label tokens.

A warm-up step runs first (it allocates AdamW's state and pays one-off costs); then ``steps`` steps are measured with
:func:`peft_core.memory.make_probe` (CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``;
CPU: the peak resident set size of the process). Reported (MiB, seconds)::

    before_mb   memory held when a step starts: weights, AdamW state, inputs (gradients are freed between steps)
    peak_mb     the highest memory during the measured steps
    step_mb     peak_mb - before_mb: activations kept for backward, gradients, temporaries
    step_s      median wall time of a measured step

On the CPU the resident set size includes the interpreter and libraries and never shrinks below what the process
once held, so compare methods with :func:`measure_isolated` (each in a fresh process).

    vl-pet memory --backbone bart-base --methods vl-pet-large,full-finetune --batch-size 8
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

MIB = 2**20


def measure_train_step(backbone: str, method: str, batch_size: int, n_vis_tokens: int = 36, text_len: int = 20,
                       target_len: int = 20, device: str = "cpu", steps: int = 2,
                       config_overrides: dict[str, Any] | None = None,
                       method_overrides: dict[str, Any] | None = None, feat_dim: int = 2048,
                       seed: int = 0) -> dict[str, Any]:
    """Build ``backbone`` (real size unless ``config_overrides``) with ``method`` on ``device`` and measure one
    training step (see the module docstring). Returns ``peak_mb``, ``before_mb``, ``step_mb``, ``step_s``,
    ``trainable``, ``total``, ``percent`` and the settings."""
    import torch
    from peft_core.memory import make_probe

    from vl_adapter_vlpet.models import MethodConfig, ModelConfig, build_model

    if batch_size <= 0 or n_vis_tokens <= 0 or text_len <= 0 or target_len <= 0 or steps <= 0:
        raise ValueError(f"batch_size={batch_size}, n_vis_tokens={n_vis_tokens}, text_len={text_len}, "
                         f"target_len={target_len}, steps={steps}: expected integers > 0")
    torch.manual_seed(seed)
    dev = torch.device(device)
    model_cfg = ModelConfig(backbone=backbone, config_overrides=dict(config_overrides or {}), feat_dim=feat_dim,
                            n_vis_tokens=n_vis_tokens, downsample=False)
    bundle = build_model(model_cfg, MethodConfig(preset=method, overrides=dict(method_overrides or {})), device=dev)
    model = bundle.model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, eps=1e-6, weight_decay=0.01)
    vocab = model.get_input_embeddings().weight.shape[0]
    g = torch.Generator().manual_seed(seed)
    batch = {
        "input_ids": torch.randint(4, vocab, (batch_size, text_len), generator=g),
        "attention_mask": torch.ones(batch_size, text_len, dtype=torch.long),
        "vis_feats": torch.randn(batch_size, n_vis_tokens, feat_dim, generator=g),
        "vis_pos": torch.zeros(batch_size, n_vis_tokens, 4),
        "labels": torch.randint(4, vocab, (batch_size, target_len), generator=g),
    }
    batch = {k: v.to(dev) for k, v in batch.items()}

    def step() -> None:
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: AdamW state, one-off allocations
    probe = make_probe(dev)
    before = probe.current()
    times, peak = [], 0
    for _ in range(steps):
        probe.start_window()
        start = time.perf_counter()
        step()
        probe.sync()
        times.append(time.perf_counter() - start)
        peak = max(peak, probe.peak())
    report = bundle.params
    return {"backbone": backbone, "method": method, "device": str(dev), "batch_size": batch_size,
            "n_vis_tokens": n_vis_tokens, "text_len": text_len, "target_len": target_len,
            "before_mb": before / MIB, "peak_mb": peak / MIB, "step_mb": (peak - before) / MIB,
            "step_s": statistics.median(times), "trainable": report.trainable, "total": report.total,
            "percent": report.percent, "probe": probe.method}


def measure_isolated(backbone: str, method: str, batch_size: int, timeout_s: float | None = None,
                     **kw: Any) -> dict[str, Any]:
    """:func:`measure_train_step` in a fresh Python process (clean CPU peak RSS); raises ``RuntimeError`` with the
    child's error output when it fails."""
    from peft_core.memory import run_in_fresh_process

    spec = {"backbone": backbone, "method": method, "batch_size": batch_size, **kw}
    return run_in_fresh_process("vl_adapter_vlpet.memory", spec, f"{method} on {backbone}", timeout_s)


def format_measurements(rows: list[dict[str, Any]]) -> str:
    header = (f"{'method':<22} {'trainable':>12} {'trainable %':>11} {'before MiB':>11} {'peak MiB':>10} "
              f"{'step MiB':>10} {'step s':>8}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['method']:<22} {r['trainable']:>12,} {r['percent']:>11.2f} {r['before_mb']:>11.0f} "
                     f"{r['peak_mb']:>10.0f} {r['step_mb']:>10.0f} {r['step_s']:>8.3f}")
    if rows:
        r = rows[0]
        lines.append(f"{r['backbone']} on {r['device']} ({r['probe']}); batch {r['batch_size']}, {r['text_len']} "
                     f"text + {r['n_vis_tokens']} visual tokens, {r['target_len']} target tokens")
    return "\n".join(lines)


if __name__ == "__main__":
    print(json.dumps(measure_train_step(**json.loads(sys.argv[1]))))
