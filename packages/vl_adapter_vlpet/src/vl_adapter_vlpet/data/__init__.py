"""Data of the VL-PET / VL-Adapter tasks: upstream annotation formats, feature stores, batching, multitask loading.

    store = H5FeatureStore("datasets/COCO/clip_features/data_clip_RN101_att")
    vqa = build_task_dataset("vqa", "karpathy_train", data_cfg, tokenizer)          # store opened from data_cfg
    loader = MultitaskLoader({"vqa": vqa, "gqa": gqa}, batch_size=500, tokenizer=tokenizer, seed=42, info=dist)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for batch in loader: ...                       # batch["task"], input_ids, vis_feats, labels, ids, targets
    test = build_task_dataset("vqa", "karpathy_test", data_cfg, tokenizer)
    preds = ...                                        # {id: generated text}
    evaluate_task("vqa", preds, test.references())     # or the batches' "targets", keyed by their "ids"

Errors in data files raise :class:`DataFormatError` (a ``ValueError``) naming the file, entry and expectation.
"""

from vl_adapter_vlpet.data.base import ItemSpec, Record, VLTaskDataset, VQATarget
from vl_adapter_vlpet.data.build import LENGTHS, build_task_dataset, is_train_split, load_records
from vl_adapter_vlpet.data.collate import collate
from vl_adapter_vlpet.data.errors import DataFormatError
from vl_adapter_vlpet.data.features import (
    FeatureStore,
    H5FeatureStore,
    NpzVideoFeatureStore,
    ParquetFeatureStore,
    pool_grid,
    resize_frames,
)
from vl_adapter_vlpet.data.multitask import MultitaskLoader, TaskCollate, epoch_indices, eval_loader
from vl_adapter_vlpet.data.sources import open_feature_store
from vl_adapter_vlpet.data.tasks import TASKS, TaskSpec, task_batch_size, task_prompt, task_spec

__all__ = [
    "LENGTHS", "TASKS", "DataFormatError", "FeatureStore", "H5FeatureStore", "ItemSpec", "MultitaskLoader",
    "NpzVideoFeatureStore", "ParquetFeatureStore", "Record", "TaskCollate", "TaskSpec", "VLTaskDataset", "VQATarget",
    "build_task_dataset", "collate", "epoch_indices", "eval_loader", "is_train_split", "load_records",
    "open_feature_store", "pool_grid", "resize_frames", "task_batch_size", "task_prompt", "task_spec",
]
