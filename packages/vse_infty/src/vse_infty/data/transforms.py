"""Upstream raw-image transforms (RawImageDataset._process_image) on tensors, with explicit randomness.

woodfrog/vse_infty@47fbb71f37:lib/datasets/image_caption.py, non-detector backbones (``backbone_source`` wsl /
imagenet), ``target = 256 * input_scale_factor`` (UniPT: ``--input_scale_factor 2.0`` -> 512 = ``input_size``):

    train: r ~ U[0.6, 1.0);  crop (int(H r), int(W r)) at a random offset (x0 ~ randint(W - w) exclusive, 0 if
           equal);  resize to (target, target) (cv2 INTER_LINEAR, aspect ratio not kept);  horizontal flip if
           U[0, 1) > 0.5;  (x / 255 - mean) / std  (ImageNet mean/std)
    eval:  resize the whole image to (target, target);  normalise

cv2's INTER_LINEAR is bilinear with half-pixel centres and no antialiasing, i.e. ``F.interpolate(bilinear,
align_corners=False, antialias=False)``. The flip is drawn as ``U < flip_prob`` (the same distribution at 0.5).
Grey-scale images are replicated to 3 channels (upstream concatenates the channel 3 times); RGBA / palette images
are converted to RGB.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from vse_infty.data.layout import DataFormatError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
UPSTREAM_INPUT_SIZE = 512
"""256 x input_scale_factor 2.0 (UniPT's train_{coco,f30k}_wsl.sh)."""
CROP_RANGE = (0.6, 1.0)
FLIP_PROB = 0.5


def load_image(path: str | Path) -> Image.Image:
    """Open an image file as RGB; an unreadable file raises :class:`DataFormatError` naming it."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise DataFormatError(f"{path}: image file not found; expected an image (JPEG / PNG) there") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataFormatError(f"{path}: cannot be decoded as an image ({exc}); expected a JPEG / PNG file") from None


def to_float(image: Image.Image | torch.Tensor) -> torch.Tensor:
    """``(3, H, W)`` float in [0, 1] from a PIL image or a uint8 / float tensor."""
    if isinstance(image, Image.Image):
        image = torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1)
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image tensor of shape {tuple(image.shape)}; expected (3, H, W) or (1, H, W)")
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    return image.float() / 255.0 if image.dtype == torch.uint8 else image.float()


class ImageTransform:
    """Resize to ``(size, size)`` and normalise; in training first the upstream random crop and flip.

    ``transform(image, generator=None)``: the training randomness comes from ``generator`` (or torch's global RNG).
    """

    def __init__(self, size: int = UPSTREAM_INPUT_SIZE, train: bool = False, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, crop_range: tuple[float, float] = CROP_RANGE,
                 flip_prob: float = FLIP_PROB) -> None:
        if size < 1:
            raise ValueError(f"input_size={size}; expected a positive number of pixels")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean={tuple(mean)}, std={tuple(std)}; expected 3 values each (RGB)")
        if not 0.0 < crop_range[0] <= crop_range[1] <= 1.0:
            raise ValueError(f"crop_range={crop_range}; expected 0 < low <= high <= 1")
        self.size, self.train = int(size), bool(train)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.crop_range, self.flip_prob = crop_range, flip_prob

    def __repr__(self) -> str:
        return f"ImageTransform(size={self.size}, train={self.train})"

    @staticmethod
    def _uniform(generator: torch.Generator | None) -> float:
        return float(torch.rand((), generator=generator))

    @staticmethod
    def _offset(slack: int, generator: torch.Generator | None) -> int:
        return 0 if slack <= 0 else int(torch.randint(slack, (), generator=generator))

    def random_crop(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        low, high = self.crop_range
        ratio = low + (high - low) * self._uniform(generator)
        height, width = image.shape[-2:]
        crop_h, crop_w = max(1, int(height * ratio)), max(1, int(width * ratio))
        x0 = self._offset(width - crop_w, generator)
        y0 = self._offset(height - crop_h, generator)
        return image[:, y0:y0 + crop_h, x0:x0 + crop_w]

    def __call__(self, image: Image.Image | torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = to_float(image)
        if self.train:
            x = self.random_crop(x, generator)
        x = F.interpolate(x[None], size=(self.size, self.size), mode="bilinear", align_corners=False,
                          antialias=False)[0]
        if self.train and self._uniform(generator) < self.flip_prob:  # upstream: random() > 0.5
            x = x.flip(-1)
        return (x - self.mean) / self.std


def build_transform(input_size: int = UPSTREAM_INPUT_SIZE, train: bool = False,
                    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> ImageTransform:
    """The upstream training (random crop 0.6-1.0, resize, flip) or evaluation (resize) transform."""
    return ImageTransform(input_size, train, mean, std)
