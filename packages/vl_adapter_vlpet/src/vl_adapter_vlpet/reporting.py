"""Run results: one ``peft_core.results.RunResult`` per task (system ``vl_pet``) plus the average, and a table.

Names follow shared/baselines/vl_pet.toml so ``vl-pet compare`` finds the paper's rows:

=========  ==============  ===============  =========================================
task       dataset         split            metric (others kept beside it)
=========  ==============  ===============  =========================================
vqa        vqa             karpathy_test    vqa_score
gqa        gqa             test_dev         gqa_acc
nlvr2      nlvr2           test             nlvr2_acc
caption    coco_caption    karpathy_test    cider (bleu4, ...)
(all 4)    average         vqa+gqa+nlvr2+coco_caption   avg = mean of the four (the paper's Avg. column)
=========  ==============  ===============  =========================================

Video tasks keep their own names (dataset = task, split = the test split). The split of a result is the table's name
when the run used the upstream split, else the split it really used. Method names are this package's
(``vl-pet-large``, ``vl-adapter``, ...); the Table 9 variants are written as the baseline file names them
(``vl-adapter+g-large+lw``, ``compacter+g-large+lw``). ``trainable_params`` / ``total_params`` count the VL model with
the method (visual embedding included), the convention of Table 2's Params (%).
"""

from __future__ import annotations

import io
import resource
import sys
from collections.abc import Mapping
from typing import Any

import torch
from peft_core.results import RunResult

SYSTEM = "vl_pet"
PACKAGE = "vl-adapter-vlpet"

DATASETS: dict[str, tuple[str, str, str]] = {
    # task: (dataset, upstream test split, the split name of shared/baselines/vl_pet.toml)
    "vqa": ("vqa", "karpathy_test", "karpathy_test"),
    "gqa": ("gqa", "testdev", "test_dev"),
    "nlvr2": ("nlvr2", "test", "test"),
    "caption": ("coco_caption", "karpathy_test", "karpathy_test"),
}
PRIMARY: dict[str, tuple[str, ...]] = {
    "vqa": ("vqa_score",), "gqa": ("gqa_acc",), "nlvr2": ("nlvr2_acc",), "caption": ("cider",),
    "tvqa": ("tvqa_acc", "accuracy", "acc"), "how2qa": ("how2qa_acc", "accuracy", "acc"),
    "tvc": ("cider",), "yc2c": ("cider",),
}
AVERAGE = ("average", "vqa+gqa+nlvr2+coco_caption")
RESULT_METHOD = {"vl-adapter-glarge-lw": "vl-adapter+g-large+lw", "compacter-glarge-lw": "compacter+g-large+lw"}


def result_method(method: str) -> str:
    """The method name a result file carries (the baseline table's name where it differs)."""
    return RESULT_METHOD.get(method, method)


def primary_metric(task: str, metrics: Mapping[str, float]) -> str:
    """The metric of ``task`` that model selection and the average use."""
    for name in PRIMARY.get(task, ()):
        if name in metrics:
            return name
    if not metrics:
        raise ValueError(f"task {task!r} produced no metric")
    return next(iter(metrics))


def selection_score(metrics: Mapping[str, Mapping[str, float]]) -> float:
    """Mean over tasks of each task's primary metric (upstream's Avg.: CIDEr x100 counts like an accuracy)."""
    values = [m[primary_metric(task, m)] for task, m in metrics.items()]
    return sum(values) / len(values)


def dataset_split(task: str, split: str) -> tuple[str, str]:
    """(dataset, split) names of a result on ``task``'s ``split``."""
    if task in DATASETS:
        dataset, upstream, table = DATASETS[task]
        return dataset, table if split == upstream else split
    return task, split


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated memory; CPU: peak resident set size of this process (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def make_results(task_metrics: Mapping[str, Mapping[str, float]], splits: Mapping[str, str], *, method: str,
                 backbone: str, trainable: int, total: int, seed: int | None, wall_time_s: float | None,
                 peak_mb: float | None, extra: dict[str, Any]) -> dict[str, RunResult]:
    """One result per task (keyed by task) and, when the four image tasks ran on their upstream test splits,
    ``"average"`` with metric ``avg``."""
    env = RunResult.collect_environment(PACKAGE)
    common = {"system": SYSTEM, "method": result_method(method), "backbone": backbone, "trainable_params": trainable,
              "total_params": total, "seed": seed, "wall_time_s": wall_time_s, "peak_memory_mb": peak_mb, **env}
    out: dict[str, RunResult] = {}
    for task, metrics in task_metrics.items():
        dataset, split = dataset_split(task, splits[task])
        out[task] = RunResult(task=task, dataset=dataset, split=split, metrics=dict(metrics),
                              extra={"task": task, "split_used": splits[task], **extra}, **common)
    image = [t for t in DATASETS if t in out and out[t].split == DATASETS[t][2]]
    if len(image) == len(DATASETS):
        avg = selection_score({t: task_metrics[t] for t in image})
        out["average"] = RunResult(task="multitask", dataset=AVERAGE[0], split=AVERAGE[1], metrics={"avg": avg},
                                   extra={"tasks": image, **extra}, **common)
    return out


def results_table(results: Mapping[str, RunResult], title: str = "") -> str:
    """The results of a run as a text table: one row per task, the metrics as columns."""
    from rich.console import Console
    from rich.table import Table

    names: list[str] = []
    for result in results.values():
        names += [n for n in result.metrics if n not in names]
    first = next(iter(results.values()))
    table = Table(title=title or f"{first.system}: {first.method} ({first.backbone}), trainable "
                                 f"{first.trainable_params:,} / {first.total_params:,} "
                                 f"({first.trainable_percent or 0:.2f}%)")
    table.add_column("dataset / split")
    for name in names:
        table.add_column(name, justify="right")
    for result in results.values():
        table.add_row(f"{result.dataset} / {result.split}",
                      *(f"{result.metrics[n]:.2f}" if n in result.metrics else "" for n in names))
    buffer = io.StringIO()
    Console(file=buffer, width=160, color_system=None).print(table)
    return buffer.getvalue()
