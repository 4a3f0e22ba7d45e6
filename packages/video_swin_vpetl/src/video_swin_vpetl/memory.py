"""Peak memory of one training step (forward, backward, SGD-momentum step) per recipe, one subprocess each.

Method (:mod:`peft_core.memory`, shared with ``nox -s bench``): in a fresh process the model is built and the recipe
applied; the resident set size is read, the kernel's peak RSS counter is reset (``/proc/self/clear_refs``), one
training step runs, and the peak RSS of the step is read back (``VmHWM``). ``step_peak - before`` is the memory the
step added: activations kept for backward, gradients and the optimizer's momentum buffers. CUDA:
``torch.cuda.max_memory_allocated`` around the step (after ``reset_peak_memory_stats``).

    video-swin-vpetl memory --recipes patt-kv-128,full --arch video-swin-b --frames 8 --size 224 --batch 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from peft_core.memory import run_in_fresh_process


def measure_step(recipe: str, arch: str, frames: int, size: int, batch: int, classes: int, device: str) -> dict:
    """Run in the current process: build, apply ``recipe``, one training step; memory in MiB."""
    import torch
    from peft_core.memory import make_probe
    from torch.nn import functional as F

    from video_swin_vpetl.methods import apply_recipe, build_recipe
    from video_swin_vpetl.models import create_model

    torch.manual_seed(0)
    model = create_model(arch, num_classes=classes, drop_path_rate=0.4)
    report = apply_recipe(model, build_recipe(recipe))
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    x = torch.randn(batch, 3, frames, size, size, device=device)
    y = torch.zeros(batch, dtype=torch.long, device=device)
    out: dict = {"recipe": recipe, "arch": arch, "input": [batch, 3, frames, size, size], "device": device,
                 "trainable": report.trainable, "total": report.total}
    probe = make_probe(torch.device(device))
    before = probe.current()
    probe.start_window()
    start = time.perf_counter()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    probe.sync()
    peak = probe.peak()
    out.update(step_s=time.perf_counter() - start, before_mib=before / 2**20, peak_mib=peak / 2**20,
               step_mib=(peak - before) / 2**20,
               method=probe.method)
    return out


def memory_main(args: argparse.Namespace) -> int:
    """Each recipe in its own subprocess; prints a table and one JSON line per recipe."""
    rows = []
    for recipe in [r.strip() for r in args.recipes.split(",") if r.strip()]:
        spec = {"recipe": recipe, "arch": args.arch, "frames": args.frames, "size": args.size, "batch": args.batch,
                "classes": args.classes, "device": args.device}
        try:
            rows.append(run_in_fresh_process("video_swin_vpetl.memory", spec, f"recipe {recipe!r}"))
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print(f"{'recipe':<28} {'trainable':>12} {'before MiB':>11} {'step peak MiB':>14} {'step adds MiB':>14} "
          f"{'step s':>7}")
    for r in rows:
        print(f"{r['recipe']:<28} {r['trainable']:>12,} {r['before_mib']:>11.0f} {r['peak_mib']:>14.0f} "
              f"{r['step_mib']:>14.0f} {r['step_s']:>7.1f}")
    print(f"method: {rows[0]['method'] if rows else '-'}; input {rows[0]['input'] if rows else '-'}")
    for r in rows:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    print(json.dumps(measure_step(**json.loads(sys.argv[1]))))
