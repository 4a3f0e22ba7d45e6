"""The task table: names, task prompts, multitask batch ratios, metric keys and result names.

Upstream (HenryHZY/VL-PET@7430cad ``src/multitask.py:main_worker`` and ``src/multitask_video.py:main_worker``):

    task     prompt (--use_tasks_prompts)  batch in the multitask run   metric (evaluation/)
    vqa      "vqa: "                       B                            vqa_score  (VQA soft score, %)
    gqa      "gpa: " (sic; "gqa: " here)    int(B * 100 / 60)            gqa_acc    (exact match, %)
    nlvr2    "nlvr: "                      int(B * 20 / 60)             nlvr2_acc  (generated true/false, %)
    caption  "caption: "                   int(B * 50 / 60)             cider, bleu4 (x100)
    tvqa / how2qa / tvc / yc2c  "<task>: "  B                            tvqa_acc / how2qa_acc / cider

The multitask ratios apply only when several tasks train together; a single-task run uses ``B`` (upstream's
single-task scripts pass ``--batch_size`` straight to the task's loader). A ratio that would give a batch of 0
(upstream crashes) gives 1. Upstream names NLVR2 ``nlvr``; here it is ``nlvr2`` (``nlvr`` and ``coco_caption`` are
accepted as aliases). ``result_dataset`` / ``result_split`` are the names of shared/baselines/vl_pet.toml.
"""

from __future__ import annotations

from dataclasses import dataclass

from vl_adapter_vlpet.data.errors import DataFormatError


@dataclass(frozen=True)
class TaskSpec:
    """One task: ``prompt`` (the task prefix), ``batch_ratio`` (numerator over 60 of the multitask batch),
    ``metrics`` (keys returned by :func:`vl_adapter_vlpet.evaluation.evaluate_task`, the first is the main one),
    ``modality`` (``image`` / ``video``), and the baseline names of its test result."""

    name: str
    prompt: str
    batch_ratio: int
    metrics: tuple[str, ...]
    modality: str
    result_dataset: str
    result_split: str


TASKS: dict[str, TaskSpec] = {
    "vqa": TaskSpec("vqa", "vqa: ", 60, ("vqa_score",), "image", "vqa", "karpathy_test"),
    "gqa": TaskSpec("gqa", "gqa: ", 100, ("gqa_acc",), "image", "gqa", "test_dev"),
    "nlvr2": TaskSpec("nlvr2", "nlvr: ", 20, ("nlvr2_acc",), "image", "nlvr2", "test"),
    "caption": TaskSpec("caption", "caption: ", 50, ("cider", "bleu4"), "image", "coco_caption", "karpathy_test"),
    "tvqa": TaskSpec("tvqa", "tvqa: ", 60, ("tvqa_acc",), "video", "tvqa", "test"),
    "how2qa": TaskSpec("how2qa", "how2qa: ", 60, ("how2qa_acc",), "video", "how2qa", "test"),
    "tvc": TaskSpec("tvc", "tvc: ", 60, ("cider", "bleu4"), "video", "tvc", "test"),
    "yc2c": TaskSpec("yc2c", "yc2c: ", 60, ("cider", "bleu4"), "video", "yc2c", "test"),
}

ALIASES = {"nlvr": "nlvr2", "coco_caption": "caption", "coco": "caption"}
UPSTREAM_GQA_PROMPT = "gpa: "
"""The GQA prompt of upstream ``src/multitask.py`` (a typo kept as an option: checkpoints trained with it expect
it)."""


def task_spec(task: str) -> TaskSpec:
    """The :class:`TaskSpec` of ``task`` (aliases accepted); unknown names raise :class:`DataFormatError`."""
    name = ALIASES.get(task, task)
    if name not in TASKS:
        raise DataFormatError(f"task {task!r} is unknown; expected one of {sorted(TASKS)} "
                              f"(aliases {sorted(ALIASES)})")
    return TASKS[name]


def task_prompt(task: str, enabled: bool = True, gqa_prompt_typo: bool = False) -> str:
    """The input prefix of ``task`` ("" when task prompts are off, as in upstream full fine-tuning)."""
    spec = task_spec(task)
    if not enabled:
        return ""
    return UPSTREAM_GQA_PROMPT if spec.name == "gqa" and gqa_prompt_typo else spec.prompt


def task_batch_size(task: str, base: int, multitask: bool = True) -> int:
    """Per-task training batch: ``floor(base * ratio / 60)`` in a multitask run (at least 1), ``base`` alone."""
    if base < 1:
        raise ValueError(f"batch size {base} is not allowed; expected an integer >= 1")
    if not multitask:
        return base
    return max(1, base * task_spec(task).batch_ratio // 60)
