"""Image-caption data in the upstream VSE-infty layouts: readers, datasets, transforms, captions, batches."""

from vse_infty.data.captions import CaptionEncoder
from vse_infty.data.collate import collate_captions, collate_images, collate_pairs
from vse_infty.data.datasets import CaptionDataset, ImageDataset, PairDataset
from vse_infty.data.layout import (
    CAPTIONS_PER_IMAGE,
    DATASETS,
    IMAGE_SOURCES,
    SPLITS,
    DataFormatError,
    SplitData,
    read_split,
)
from vse_infty.data.loaders import make_eval_loaders, make_train_loader, set_epoch
from vse_infty.data.synthetic import VOCABULARY, make_synthetic_dataset, make_synthetic_split
from vse_infty.data.transforms import IMAGENET_MEAN, IMAGENET_STD, ImageTransform, build_transform, load_image

__all__ = ["CAPTIONS_PER_IMAGE", "DATASETS", "IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_SOURCES", "SPLITS", "VOCABULARY",
           "CaptionDataset", "CaptionEncoder", "DataFormatError", "ImageDataset", "ImageTransform", "PairDataset",
           "SplitData", "build_transform", "collate_captions", "collate_images", "collate_pairs", "load_image",
           "make_eval_loaders", "make_synthetic_dataset", "make_synthetic_split", "make_train_loader", "read_split",
           "set_epoch"]
