"""The README demo: every method on one frozen tiny BART, trained on a synthetic sequence-to-sequence task.

1. A tiny BART (d=64) is pre-trained (full fine-tuning, a few hundred steps) to *copy* random token sequences:
   this is the "pretrained backbone".
2. For each method: a fresh copy of that backbone is frozen, the method is injected, and only its parameters are
   trained for ``--steps`` (default 20) on a *transfer* task (output the sequence reversed, with every token
   shifted by one). Loss on a held-out batch is measured before and after.
3. A table: method, trainable parameters and %, held-out loss before / after, seconds.

    python -m peft_core.demo [--steps 20] [--out runs/demo]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from peft_core.io import atomic_write_text
from peft_core.model import add_adapter, mark_trainable
from peft_core.registry import list_presets, make_config
from peft_core.report import count_parameters

VOCAB, LENGTH, SPECIAL = 48, 8, 4  # ids 0..3: pad, bos, eos, unused


@dataclass(frozen=True)
class DemoMethod:
    label: str
    preset: str
    overrides: tuple[tuple[str, object], ...] = ()
    lr: float = 3e-3
    paper: tuple[str, str] | None = None  # (VL-PET Table 2 method name, real-size preset) for `compare`


# Sizes scaled to the tiny model (d=64); the presets' real-size settings are in `python -m peft_core presets`.
# LST and UniPT are side networks for BERT/T5 encoders and vision backbones (not BART): see their docs pages.
METHODS = [
    DemoMethod("full fine-tuning", "full", paper=("full-finetune", "full")),
    DemoMethod("LoRA r=8 (q,v)", "lora", (("r", 8), ("alpha", 16.0))),
    DemoMethod("Houlsby adapter r=16", "houlsby", (("bottleneck_dim", 16), ("init", "zero_up"))),
    DemoMethod("Pfeiffer adapter r=16", "pfeiffer", (("bottleneck_dim", 16), ("init", "zero_up"))),
    DemoMethod("VL-Adapter (reduction 8)", "vl-adapter", (("init", "zero_up"),)),
    DemoMethod("BitFit", "bitfit", lr=1e-2),
    DemoMethod("LayerNorm tuning", "layernorm", lr=1e-2),
    DemoMethod("prefix tuning L=8", "prefix", (("num_virtual_tokens", 8),), lr=1e-2),
    DemoMethod("prompt tuning L=8", "prompt", (("num_virtual_tokens", 8),), lr=1e-2),
    DemoMethod("Compacter n=2", "compacter"),
    DemoMethod("PATT kv m=16", "patt", (("mid_dim", 16), ("scale", 0.8))),
    DemoMethod("VL-PET large (r=16, gate 16)", "vlpet",
               (("granularity", "large"), ("r", 16), ("num_heads", 4), ("gate_dim", 16), ("vpa_dim", 16)),
               paper=("vl-pet-large", "vlpet-large-bart")),
    DemoMethod("token-routed MoE (4 experts)", "moe-token", (("num_experts", 4),), lr=1e-3),
]


def make_backbone(seed: int = 0) -> nn.Module:
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(seed)
    cfg = BartConfig(vocab_size=VOCAB, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                     decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=32,
                     dropout=0.0, attention_dropout=0.0, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                     decoder_start_token_id=2, forced_eos_token_id=None, attn_implementation="eager")
    return BartForConditionalGeneration(cfg)


def batch(task: str, size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    src = torch.randint(SPECIAL, VOCAB, (size, LENGTH), generator=generator)
    tgt = src if task == "copy" else (src.flip(1) - SPECIAL + 1) % (VOCAB - SPECIAL) + SPECIAL
    labels = torch.cat([tgt, torch.full((size, 1), 2)], dim=1)
    return {"input_ids": src, "attention_mask": torch.ones_like(src), "labels": labels}


def pretrain(model: nn.Module, steps: int, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    loss = torch.tensor(0.0)
    for _ in range(steps):
        loss = model(**batch("copy", 64, g)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


@torch.no_grad()
def held_out_loss(model: nn.Module, data: dict[str, torch.Tensor]) -> float:
    model.eval()
    return float(model(**data).loss)


def run_method(backbone: nn.Module, method: DemoMethod, steps: int, seed: int) -> dict:
    model = copy.deepcopy(backbone)
    if method.preset != "full":
        add_adapter(model, make_config(method.preset, **dict(method.overrides)))
        mark_trainable(model)
    report = count_parameters(model)
    test = batch("transfer", 256, torch.Generator().manual_seed(10_000))
    before = held_out_loss(model, test)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=method.lr, weight_decay=0.0)
    start = time.perf_counter()
    model.train()
    for _ in range(steps):
        loss = model(**batch("transfer", 64, g)).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{method.label}: loss became {float(loss)}")
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - start
    return {"method": method.label, "preset": method.preset, "trainable": report.trainable, "total": report.total,
            "percent": report.percent, "loss_before": before, "loss_after": held_out_loss(model, test),
            "seconds": seconds}


def real_size_counts(preset: str) -> tuple[int, int]:
    """Trainable and total parameters of ``preset`` on VL-BART-base (bart-base + the VL-Adapter visual embedding),
    built on the meta device: the numbers VL-PET's Table 2 reports as Params %."""
    from peft_core.model import remove_adapters
    from peft_core.zoo_vl import build_vl_model

    model = build_vl_model("bart-base", device="meta")
    if preset == "full":
        total = count_parameters(model).total
        return total, total
    add_adapter(model, make_config(preset))
    mark_trainable(model)
    report = count_parameters(model)
    remove_adapters(model)
    return report.trainable, report.total


def write_run_results(rows: list[dict], methods: list[DemoMethod], out: Path, seed: int) -> list[Path]:
    """One shared-schema result per demo method that has a VL-PET Table 2 counterpart.

    ``metrics`` hold the demo's synthetic held-out loss (dataset ``synthetic_seq2seq``: never compared with the
    paper's task metrics, ``compare`` flags that), ``trainable_params``/``total_params`` the real-size count of the
    same preset on VL-BART-base, which ``compare`` puts beside Table 2's Params %.
    """
    from peft_core.results import RunResult

    paths = []
    for row, method in zip(rows, methods):
        if method.paper is None:
            continue
        paper_name, preset = method.paper
        trainable, total = real_size_counts(preset)
        result = RunResult(
            system="vl_pet", task="demo", dataset="synthetic_seq2seq", split="heldout", method=paper_name,
            backbone="bart-base", metrics={"heldout_loss": row["loss_after"]}, trainable_params=trainable,
            total_params=total, seed=seed, wall_time_s=row["seconds"],
            extra={"note": "metrics from the tiny demo BART (d=64); parameter counts of the real-size preset",
                   "demo_trainable_params": row["trainable"], "preset": preset},
            **RunResult.collect_environment(),
        )
        paths.append(result.write(out / "results" / f"{paper_name}.json"))
    return paths


def format_table(rows: list[dict]) -> str:
    header = f"{'method':28s} {'trainable':>10s} {'%':>8s} {'loss before':>12s} {'loss after':>11s} {'s':>6s}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['method']:28s} {r['trainable']:>10,d} {r['percent']:>7.2f}% {r['loss_before']:>12.3f} "
                     f"{r['loss_after']:>11.3f} {r['seconds']:>6.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m peft_core.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="training steps per method (default 20)")
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="folder for results.json / table.txt")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    from tqdm.auto import tqdm

    known = {p.name for p in list_presets()} | {"full"}
    methods = [m for m in METHODS if m.preset in known or _is_method(m.preset)]
    backbone = make_backbone(args.seed)
    print(f"pre-training the tiny BART backbone on the copy task ({args.pretrain_steps} steps)...")
    copy_loss = pretrain(backbone, args.pretrain_steps, args.seed)
    print(f"backbone copy-task loss after pre-training: {copy_loss:.3f}")
    rows = []
    for method in tqdm(methods, desc="methods"):
        rows.append(run_method(backbone, method, args.steps, args.seed))
    table = format_table(rows)
    print(f"\ntransfer task (reverse and shift), {args.steps} steps per method, held-out loss:\n{table}")
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "results.json", json.dumps(rows, indent=2))
    atomic_write_text(args.out / "table.txt", table + "\n")
    paths = write_run_results(rows, methods, args.out, args.seed)
    command = "python -m peft_core compare " + " ".join(map(str, paths))
    print(f"\nwrote {args.out / 'results.json'}, {args.out / 'table.txt'} and {len(paths)} result files; compare the "
          f"real-size parameter counts with VL-PET Table 2:\n  {command}")
    return 0


def _is_method(name: str) -> bool:
    from peft_core.registry import list_methods

    return name in list_methods()


if __name__ == "__main__":
    raise SystemExit(main())
