"""DataLoaders for training (shuffled, sharded over DDP ranks) and evaluation (every item on exactly one rank).

Training follows upstream get_loader(train=True): shuffle, ``drop_last=True``, one item per caption. The order of
an epoch is ``DistributedSampler(seed, epoch)`` (also with one process), and the augmentation is drawn from
``(seed, epoch, index)``: call :func:`set_epoch` before each epoch and an epoch is reproducible, so resuming from an
epoch checkpoint gives the same batches. Evaluation shards images and captions ``rank::world_size`` with
:class:`peft_core.runtime.distributed.ShardSampler` (no padding, no item twice).
"""

from __future__ import annotations

from peft_core.runtime.distributed import DistInfo, ShardSampler
from torch.utils.data import DataLoader, DistributedSampler
from transformers import PreTrainedTokenizerBase

from vse_infty.data.datasets import CaptionDataset, ImageDataset, PairDataset, Transform
from vse_infty.data.layout import SplitData


def make_train_loader(split_data: SplitData, tokenizer: PreTrainedTokenizerBase, transform: Transform | None,
                      batch_size: int, *, max_length: int | None = None, seed: int = 0, workers: int = 0,
                      dist_info: DistInfo | None = None, pin_memory: bool = False) -> DataLoader:
    """Shuffled training pairs, ``batch_size`` per process, incomplete last batch dropped (upstream)."""
    info = dist_info or DistInfo()
    dataset = PairDataset(split_data, tokenizer, transform, train=True, max_length=max_length, seed=seed)
    sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed,
                                 drop_last=True)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True, num_workers=workers,
                        pin_memory=pin_memory, collate_fn=dataset.collate_fn)
    if len(loader) == 0:
        raise ValueError(f"{split_data.root} {split_data.split}: {len(dataset)} captions give no full batch of "
                         f"{batch_size} x {info.world_size} process(es); lower the batch size")
    return loader


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Set the epoch of a training loader's sampler (order) and dataset (augmentation)."""
    for owner in (loader.sampler, loader.dataset):
        if hasattr(owner, "set_epoch"):
            owner.set_epoch(epoch)


def make_eval_loaders(split_data: SplitData, tokenizer: PreTrainedTokenizerBase, transform: Transform | None,
                      batch_size: int, *, max_length: int | None = None, workers: int = 0,
                      dist_info: DistInfo | None = None, pin_memory: bool = False) -> tuple[DataLoader, DataLoader]:
    """``(image_loader, caption_loader)`` over every image and caption, sharded over the DDP ranks."""
    info = dist_info or DistInfo()
    images = ImageDataset(split_data, transform)
    captions = CaptionDataset(split_data, tokenizer, max_length)
    image_loader = DataLoader(images, batch_size=batch_size, sampler=ShardSampler(len(images), info),
                              num_workers=workers, pin_memory=pin_memory, collate_fn=images.collate_fn)
    caption_loader = DataLoader(captions, batch_size=batch_size, sampler=ShardSampler(len(captions), info),
                                num_workers=workers, pin_memory=pin_memory, collate_fn=captions.collate_fn)
    return image_loader, caption_loader
