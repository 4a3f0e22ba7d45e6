"""``build_task_dataset``: one task's split as a :class:`~vl_adapter_vlpet.data.base.VLTaskDataset`.

Length limits per task (upstream, see the task modules): input / target tokens

    vqa 20 / 10    gqa 20 / -    nlvr2 - / -    caption 40 / 40    tvqa, how2qa, tvc, yc2c 600 / 20

(``-``: not truncated). The prompt precedes the text for image tasks and follows it for video tasks (upstream
``f"{sent} {prompt}"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vl_adapter_vlpet.data.base import ItemSpec, Record, VLTaskDataset
from vl_adapter_vlpet.data.caption import load_caption
from vl_adapter_vlpet.data.errors import DataFormatError
from vl_adapter_vlpet.data.features import FeatureStore
from vl_adapter_vlpet.data.gqa import load_gqa
from vl_adapter_vlpet.data.nlvr2 import load_nlvr2
from vl_adapter_vlpet.data.sources import open_feature_store, option, video_root
from vl_adapter_vlpet.data.tasks import task_prompt, task_spec
from vl_adapter_vlpet.data.video import load_video
from vl_adapter_vlpet.data.vqa import load_vqa

LENGTHS: dict[str, tuple[int | None, int | None]] = {
    "vqa": (20, 10), "gqa": (20, None), "nlvr2": (None, None), "caption": (40, 40),
    "tvqa": (600, 20), "how2qa": (600, 20), "tvc": (600, 20), "yc2c": (600, 20),
}
"""``(max input tokens, max target tokens)`` per task; ``None``: not truncated."""


def is_train_split(split: str) -> bool:
    """Upstream's training splits all contain ``train`` (``karpathy_train``, ``train,valid``, ``train_release``)."""
    return "train" in split


def load_records(task: str, split: str, data_cfg: Any, train: bool) -> list[Record]:
    """Parse the annotation files of ``task`` / ``split`` under ``data_cfg.root``."""
    name = task_spec(task).name
    root = Path(option(data_cfg, "root"))
    if name == "vqa":
        mode = option(data_cfg, "vqa_eval")
        if mode not in ("raw", "label"):
            raise DataFormatError(f"data.vqa_eval={mode!r} is not allowed; expected 'raw' or 'label'")
        return load_vqa(root, split, with_raw_answers=not train and mode == "raw")
    if name == "gqa":
        return load_gqa(root, split)
    if name == "nlvr2":
        return load_nlvr2(root, split)
    if name == "caption":
        return load_caption(root, split)
    return load_video(name, video_root(data_cfg), split)


FROM_CONFIG: Any = object()
"""Default of :func:`build_task_dataset`'s ``pool_size`` / ``video_frames``: read them from the data config."""


def build_task_dataset(task: str, split: str, data_cfg: Any, tokenizer: Any, store: FeatureStore | None = None, *,
                       train: bool | None = None, seed: int = 0, limit: int | None = None,
                       feat_dim: int | None = None, pool_size: int | None = FROM_CONFIG,
                       video_frames: int = FROM_CONFIG) -> VLTaskDataset:
    """The dataset of ``task`` / ``split``.

    Args:
        data_cfg: the ``data`` config (attributes read: see :mod:`vl_adapter_vlpet.data.sources`).
        tokenizer: a VL tokenizer (``encode`` and ``pad_token_id``).
        store: the feature store; ``None`` opens the configured one (:func:`~.sources.open_feature_store`).
        train: training behaviour (drawn answers, one item per caption); default: the split name contains
            ``train``.
        seed: base seed of the answer draws. limit: keep the first N items (default ``data_cfg.train_limit`` /
            ``eval_limit``, upstream ``--train_topk`` / ``--valid_topk``).
        feat_dim: feature size the opened store checks (e.g. ``model.feat_dim``); ``None``: any.
        pool_size: side of the pooled grid (e.g. ``model.pool_size`` = 6 for 36 tokens; ``None`` keeps 7 x 7);
            video_frames: frames per video (upstream ``--n_boxes 64``). Both default to the data config's
            ``pool_size`` / ``video_frames`` (6 / 64 when absent).
    """
    spec = task_spec(task)
    train = is_train_split(split) if train is None else train
    records = load_records(spec.name, split, data_cfg, train)
    limit = limit if limit is not None else option(data_cfg, "train_limit" if train else "eval_limit")
    if limit is not None:
        records = records[: int(limit)]
    if not records:
        raise DataFormatError(f"{spec.name}/{split}: the split holds no items under {option(data_cfg, 'root')}")
    max_input, max_target = LENGTHS[spec.name]
    video = spec.modality == "video"
    answer_mode = option(data_cfg, "train_answer") if spec.name in ("vqa", "gqa") else "most_common"
    pool_size = option(data_cfg, "pool_size") if pool_size is FROM_CONFIG else pool_size
    video_frames = option(data_cfg, "video_frames") if video_frames is FROM_CONFIG else video_frames
    item_spec = ItemSpec(
        prompt=task_prompt(spec.name, option(data_cfg, "task_prompts"), option(data_cfg, "gqa_prompt_typo")),
        prompt_after=video, max_input_length=max_input, max_target_length=max_target,
        pool_size=None if video else pool_size, video_frames=video_frames if video else None,
        answer_mode=answer_mode)
    if store is None:
        store = open_feature_store(spec.name, split, data_cfg, feat_dim=feat_dim)
    return VLTaskDataset(spec.name, split, records, tokenizer, store, item_spec, train=train, seed=seed)
