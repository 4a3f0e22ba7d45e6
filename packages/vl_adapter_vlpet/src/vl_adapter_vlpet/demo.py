"""Demo: VL-PET-large, VL-Adapter, LoRA and full fine-tuning on a synthetic multitask set, through ``vl-pet train``.

1. Data: :func:`vl_adapter_vlpet.data.synthetic.make_synthetic_multitask` writes, at run time and in the upstream
   formats (per-image h5 features, VQA / GQA / NLVR2 / COCO JSON files), images whose 7 x 7 grid features encode a
   colour, a shape and a count, with questions, statements and captions about them.
2. Backbone: a tiny VL-BART (d = 64, 2 + 2 layers, random init, word-level tokenizer over the set's words). A random
   frozen backbone would make every PETL method meaningless, so, as ``python -m peft_core.demo`` pre-trains its tiny
   BART on a copy task, the VL-BART is first pre-trained (all weights) on two objectives: BART's text denoising
   (rebuild a sentence from a copy with 30% of its tokens masked, no image; the sentences of the training splits and
   random strings of the vocabulary, so every word is known to the language model) and captioning of the training
   images (it learns to read the visual features). No question / answer pair is seen. Every method then starts from
   these weights (``run.init_from``) with the backbone frozen (PETL) or trainable (full fine-tuning). With captioning
   alone, the decoder never learns to depend on the input text nor to write yes / no / true / false, and the PETL
   methods stay near 0 on VQA, GQA and NLVR2 within the demo's budget.
3. Transfer: each method trains on the four tasks together (round-robin loader, task prompts, upstream batch ratios)
   for the same number of epochs, steps and examples; the test split of each task is scored before and after
   (``vqa_score``, ``gqa_acc``, ``nlvr2_acc``, ``cider``). Learning rates are chosen for this size (the real-size
   recipes are in ``configs/``).
4. Tables: per-task metrics before / after, the tiny model's trainable %, and the real-size trainable % of the same
   methods on VL-BART-base (meta device, :mod:`vl_adapter_vlpet.counts`) next to the paper's Table 2 through
   ``peft_core.compare`` (result files in ``<out>/compare``; ``vl-pet compare <out>/compare/*.json``).

    vl-pet demo [--out runs/demo/vl_adapter_vlpet] [--quick]
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft_core.io import atomic_write_text

TINY_BART = {"d_model": 64, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
             "decoder_attention_heads": 4, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128,
             "max_position_embeddings": 128}
TASKS = ("vqa", "gqa", "nlvr2", "caption")
QA_TASKS = ("vqa", "gqa", "nlvr2")
METRICS = {"vqa": "vqa_score", "gqa": "gqa_acc", "nlvr2": "nlvr2_acc", "caption": "cider"}


@dataclass(frozen=True)
class DemoMethod:
    label: str
    preset: str
    overrides: dict[str, Any] = field(default_factory=dict)
    lr: float = 3e-3


METHODS = (
    DemoMethod("VL-PET-large (r 16, r_g 16, VPA 16)", "vl-pet-large",
               {"r": 16, "num_heads": 4, "gate_dim": 16, "vpa_dim": 16}),
    DemoMethod("VL-Adapter (reduction 8)", "vl-adapter"),
    DemoMethod("LoRA (r 8, q and v)", "lora", {"r": 8}),
    DemoMethod("full fine-tuning", "full-finetune", lr=1e-3),
)
"""Hidden sizes scaled to d = 64 (the presets' real-size values exceed it); the rest is each method's recipe."""


@dataclass(frozen=True)
class DemoSettings:
    n_images: int = 160
    eval_images: int | None = 40
    feat_dim: int = 32
    pretrain_epochs: int = 30
    epochs: int = 15
    batch_size: int = 16
    eval_every: int = 5
    pretrain_lr: float = 2e-3
    mask_ratio: float = 0.3
    random_strings: int = 400
    lr_scale: float = 1.0


FULL = DemoSettings()
QUICK = DemoSettings(n_images=24, eval_images=None, pretrain_epochs=30, epochs=20, batch_size=12, eval_every=0,
                     random_strings=200, lr_scale=2.0)
"""The reduced budget of ``--quick`` (tests): fewer images, no validation (the last weights are tested)."""


@dataclass
class DemoRow:
    method: str
    preset: str
    trainable: int
    total: int
    before: dict[str, dict[str, float]]
    after: dict[str, dict[str, float]]
    seconds: float
    real_trainable: int
    real_total: int
    paper_percent: float | None

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total

    @property
    def real_percent(self) -> float:
        return 100.0 * self.real_trainable / self.real_total


def _overrides(out: Path, settings: DemoSettings, seed: int) -> list[str]:
    return [
        "model.backbone=bart-base", f"model.tokenizer={out / 'tokenizer'}",
        f"model.config_overrides={json.dumps(TINY_BART)}", f"model.feat_dim={settings.feat_dim}",
        "model.n_vis_tokens=4", "model.num_beams=2", "model.gen_max_length=12",
        f"data.root={out / 'data'}", f"data.batch_size={settings.batch_size}", "data.num_workers=0",
        "data.splits={gqa: {train: train, val: valid}}",
        "data.task_prompts=true", "optim.dropout=0.0", "optim.warmup_ratio=0.05", "run.device=cpu",
        "run.progress=false", "run.quiet=true", "run.tensorboard=false", "run.resume=none", f"run.seed={seed}",
    ]


def denoising_batch(tokenizer: Any, sentences: list[str], mask_ratio: float, generator: torch.Generator,
                    n_vis: int, feat_dim: int) -> dict[str, torch.Tensor]:
    """BART text infilling in miniature: ``mask_ratio`` of the word tokens replaced by ``<mask>``, the target is the
    sentence; the visual tokens are present but masked out of attention (text only)."""
    enc = tokenizer(sentences, padding=True, return_tensors="pt")
    ids, keep = enc["input_ids"], enc["attention_mask"]
    special = torch.tensor([tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id])
    noise = (torch.rand(ids.shape, generator=generator) < mask_ratio) & ~torch.isin(ids, special)
    b = len(sentences)
    return {"input_ids": ids.masked_fill(noise, tokenizer.mask_token_id), "attention_mask": keep,
            "vis_feats": torch.zeros(b, n_vis, feat_dim), "vis_pos": torch.zeros(b, n_vis, 4),
            "vis_attention_mask": torch.zeros(b, n_vis, dtype=torch.long),
            "labels": ids.masked_fill(keep == 0, -100)}


def pretrain(out: Path, settings: DemoSettings, seed: int) -> tuple[Path, list[dict[str, float]]]:
    """Pre-train the tiny VL-BART (all weights): captioning + text denoising, one batch of each per step (module
    docstring). Returns the state dict file and the per-epoch losses."""
    import random

    from peft_core.runtime.distributed import DistInfo

    from vl_adapter_vlpet.config import load_config
    from vl_adapter_vlpet.data import MultitaskLoader, load_records
    from vl_adapter_vlpet.data.synthetic import WORDS
    from vl_adapter_vlpet.engine import batch_loss
    from vl_adapter_vlpet.train import build_session, task_dataset

    folder = out / "pretrain"
    folder.mkdir(parents=True, exist_ok=True)
    config = load_config(None, [*_overrides(out, settings, seed), "data.tasks=[caption]",
                                "method.preset=full-finetune", f"run.output_dir={folder}"])
    session = build_session(config, DistInfo(), folder, folder / "log.txt")
    captions = task_dataset(session, "caption", "train")
    reader = config.data.reader(config.model)
    corpus = sorted({r.text for task in TASKS
                     for r in load_records(task, config.data.split(task, "train"), reader, True)})
    rng = random.Random(seed)
    corpus += [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8))) for _ in range(settings.random_strings)]
    loader = MultitaskLoader({"caption": captions}, settings.batch_size, session.tokenizer, seed=seed)
    model, tokenizer = session.model, session.tokenizer
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.pretrain_lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    n_vis, feat_dim = config.model.n_vis_tokens, config.model.feat_dim
    history = []
    model.train()
    for epoch in range(settings.pretrain_epochs):
        loader.set_epoch(epoch)
        sums, steps = [0.0, 0.0], 0
        for batch in loader:
            caption_loss = batch_loss(model, batch, session.device, amp=False)
            text = denoising_batch(tokenizer, rng.sample(corpus, settings.batch_size), settings.mask_ratio, generator,
                                   n_vis, feat_dim)
            text_loss = model(**text).loss
            optimizer.zero_grad(set_to_none=True)
            (caption_loss + text_loss).backward()
            optimizer.step()
            sums[0] += caption_loss.item()
            sums[1] += text_loss.item()
            steps += 1
        history.append({"epoch": epoch, "caption_loss": sums[0] / steps, "denoising_loss": sums[1] / steps})
    path = folder / "backbone.pt"
    torch.save(model.state_dict(), path)
    return path, history


def run_method(method: DemoMethod, out: Path, backbone: Path, settings: DemoSettings, seed: int) -> DemoRow:
    """One method: ``vl-pet train`` on the four tasks from the pre-trained backbone, test before and after."""
    from vl_adapter_vlpet.config import load_config
    from vl_adapter_vlpet.counts import count_method
    from vl_adapter_vlpet.train import run_training

    started = time.time()
    config = load_config(None, [
        *_overrides(out, settings, seed), f"data.tasks={list(TASKS)}", f"method.preset={method.preset}",
        f"method.overrides={json.dumps(method.overrides)}", f"optim.epochs={settings.epochs}",
        f"optim.lr={method.lr * settings.lr_scale}", f"run.eval_every={settings.eval_every}", "run.eval_before=true",
        f"run.init_from={backbone}", f"run.output_dir={out / 'runs' / method.preset}"])
    results = run_training(config)
    assert results is not None  # no run.stop_after
    first = next(iter(results.values()))
    before = first.extra["before"]["test"]
    after = {task: results[task].metrics for task in TASKS if task in results}
    real = count_method(method.preset, "bart-base")
    return DemoRow(method.label, method.preset, first.trainable_params, first.total_params, before, after,
                   time.time() - started, real.trainable, real.total, real.paper_percent)


def compare_files(rows: list[DemoRow], out: Path, seed: int) -> list[Path]:
    """One result per method with the *real-size* parameter counts (backbone bart-base) and the demo's average
    test score: ``peft_core.compare`` puts its trainable % beside Table 2's Params % (dataset ``*`` rows)."""
    from peft_core.results import RunResult

    from vl_adapter_vlpet.reporting import PACKAGE, SYSTEM, result_method

    paths = []
    for row in rows:
        scores = [row.after[t][METRICS[t]] for t in TASKS if t in row.after]
        result = RunResult(system=SYSTEM, task="demo", dataset="synthetic_multitask", split="test",
                           method=result_method(row.preset), backbone="bart-base",
                           metrics={"demo_avg": sum(scores) / len(scores)}, trainable_params=row.real_trainable,
                           total_params=row.real_total, seed=seed, wall_time_s=row.seconds,
                           extra={"note": "metrics of the tiny demo VL-BART (d=64) on synthetic data; parameter "
                                          "counts of the same method on the real-size VL-BART-base",
                                  "demo_trainable_params": row.trainable, "demo_total_params": row.total},
                           **RunResult.collect_environment(PACKAGE))
        paths.append(result.write(out / "compare" / f"{row.preset}.json"))
    return paths


def constant_answer_scores(data_root: Path) -> dict[str, float]:
    """Per QA task, the test score of the best constant answer (VQA / GQA: the answer with the highest mean soft
    score over the test labels; NLVR2: the majority label): what a model that ignores image and question gets."""
    def best_constant(labels: list[dict[str, float]]) -> float:
        answers = {a for label in labels for a in label}
        return 100.0 * max(sum(label.get(a, 0.0) for label in labels) for a in answers) / len(labels)

    vqa = json.loads((data_root / "vqa" / "karpathy_test.json").read_text())
    gqa = json.loads((data_root / "GQA" / "testdev.json").read_text())
    nlvr = [{str(r["label"]): 1.0} for r in json.loads((data_root / "nlvr" / "test.json").read_text())]
    return {"vqa": best_constant([r["label"] for r in vqa]), "gqa": best_constant([r["label"] for r in gqa]),
            "nlvr2": best_constant(nlvr)}


def render(rows: list[DemoRow], seconds: float, settings: DemoSettings,
           constant: dict[str, float] | None = None) -> str:
    """The demo's table: trainable % (tiny and real size, paper), test metrics before -> after, and the score of
    the best constant answer per QA task (``constant``)."""
    head = (f"{'method':<36} {'tiny trainable':>15} {'real %':>7} {'Table 2':>7}  "
            + "  ".join(f"{METRICS[t]:>15}" for t in TASKS) + f"  {'s':>5}")
    lines = [f"\nDemo: tiny VL-BART pre-trained on captioning + text denoising, then {settings.epochs} epochs of the "
             "four tasks per method (test split, before -> after)", head, "-" * len(head)]
    for r in rows:
        paper = f"{r.paper_percent:7.2f}" if r.paper_percent is not None else f"{'-':>7}"
        cells = []
        for task in TASKS:
            metric = METRICS[task]
            b, a = r.before.get(task, {}).get(metric), r.after.get(task, {}).get(metric)
            cells.append(f"{b:6.1f} -> {a:5.1f}" if b is not None and a is not None else f"{'-':>15}")
        lines.append(f"{r.method:<36} {r.trainable:>7,} ({r.percent:4.1f}%) {r.real_percent:7.2f} {paper}  "
                     + "  ".join(f"{c:>15}" for c in cells) + f"  {r.seconds:5.0f}")
    if constant:
        cells = [f"{constant[t]:15.1f}" if t in constant else f"{'-':>15}" for t in TASKS]
        lines.append(f"{'best constant answer (no learning)':<36} {'':>15} {'':>7} {'':>7}  " + "  ".join(cells))
    lines.append("tiny trainable: the d=64 demo model; real %: the same method on VL-BART-base (meta device); "
                 f"Table 2: the paper's Params %. Total {seconds:.0f} s.")
    return "\n".join(lines)


def run_demo(out: str | Path = "runs/demo/vl_adapter_vlpet", *, quick: bool = False, seed: int = 0,
             methods: tuple[str, ...] | None = None) -> list[DemoRow]:
    """Run the demo (module docstring); prints the tables and writes ``demo.json`` in ``out``. ``methods`` (presets)
    selects a subset of :data:`METHODS`."""
    from peft_core.baselines import load_baselines
    from peft_core.compare import compare_runs, render_text

    from vl_adapter_vlpet.data.synthetic import WORDS, make_synthetic_multitask
    from vl_adapter_vlpet.testing import tiny_tokenizer

    torch.set_num_threads(1)  # a tiny model: one thread is fastest (and immune to busy-waiting on a shared CPU)
    settings = QUICK if quick else FULL
    out = Path(out)
    started = time.time()
    info = make_synthetic_multitask(out / "data", n_images=settings.n_images, seed=seed, feat_dim=settings.feat_dim,
                                    eval_images=settings.eval_images)
    tiny_tokenizer("bart-base", out / "tokenizer", texts=WORDS)
    print(f"[demo] synthetic multitask set in {out / 'data'}: {info['counts']}", flush=True)
    print(f"[demo] pre-training the tiny VL-BART: captioning + text denoising ({settings.pretrain_epochs} epochs)...",
          flush=True)
    backbone, pretrain_history = pretrain(out, settings, seed)
    last = pretrain_history[-1]
    print(f"[demo] pre-training done: caption loss {last['caption_loss']:.3f}, denoising loss "
          f"{last['denoising_loss']:.3f} ({time.time() - started:.0f} s)", flush=True)
    chosen = [m for m in METHODS if methods is None or m.preset in methods]
    if not chosen:
        raise ValueError(f"methods={methods!r} selects none of {[m.preset for m in METHODS]}")
    rows = []
    for method in chosen:
        print(f"[demo] {method.label}: {settings.epochs} epochs on {', '.join(TASKS)}...", flush=True)
        rows.append(run_method(method, out, backbone, settings, seed))
    seconds = time.time() - started
    constant = constant_answer_scores(out / "data")
    print(render(rows, seconds, settings, constant))
    paths = compare_files(rows, out, seed)
    report = compare_runs([_read(p) for p in paths], load_baselines("vl_pet"), labels=[p.stem for p in paths],
                          same_method_only=True)
    print("\nReal-size trainable % (VL-BART-base) against the paper's Table 2 (peft_core.compare):")
    print(render_text(report))
    summary = {"settings": asdict(settings), "seed": seed, "wall_time_s": seconds, "data": info["counts"],
               "best_constant_answer": constant,
               "pretrain": pretrain_history,
               "rows": [{**asdict(r), "percent": r.percent, "real_percent": r.real_percent} for r in rows],
               "compare_files": [str(p) for p in paths]}
    atomic_write_text(out / "demo.json", json.dumps(summary, indent=1, default=str) + "\n")
    print(f"wrote {out / 'demo.json'} and {len(paths)} result files (vl-pet compare {out / 'compare'}/*.json)")
    return rows


def _read(path: Path) -> Any:
    from peft_core.results import RunResult

    return RunResult.read(path)
