"""Multiscale jitter with a crop to a maximum dimension (paper appendix A.3, SPEC §5: the COCO recipe).

Each training image is resized so that its long side is ``size · s`` with ``s`` drawn uniformly from
``[min_scale, max_scale]``, then a random window of at most ``size × size`` is cut from it; boxes
are scaled, shifted, clipped to the window, and dropped when less than 1 px wide or high. At
``s = 1`` the image has exactly the scale the detector's evaluation resize gives it (long side =
``size``), so training sees objects at 0.8–1.2× (by default) their evaluation size.

The detector must not resize such images again in training: :func:`skip_train_resize_` switches
torchvision's resize off in train mode (evaluation still resizes to ``min_size``/``max_size``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

# Assumption: the paper names "multiscale jitter" without its range; 0.8–1.2 is the range of the
# TPU RetinaNet reference implementation's multiscale training (aug_scale_min/max)
DEFAULT_SCALE_RANGE = (0.8, 1.2)


def scale_jitter(image: torch.Tensor, target: dict, *, size: int, scale: float,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """(3, H, W) image + target (``boxes`` (N, 4) xyxy px, ``labels`` (N,)) -> resized and cropped.

    Long side becomes ``round(size · scale)``; the crop is at most size×size, its position random.
    """
    if size <= 0 or not scale > 0:
        raise ValueError(f"need size > 0 and scale > 0, got size={size}, scale={scale}")
    height, width = image.shape[-2:]
    factor = size * scale / max(height, width)
    new_h, new_w = max(1, round(height * factor)), max(1, round(width * factor))
    image = F.interpolate(image[None], size=(new_h, new_w), mode="bilinear", align_corners=False)[0]
    crop_h, crop_w = min(new_h, size), min(new_w, size)
    top = int(torch.randint(new_h - crop_h + 1, (), generator=generator))
    left = int(torch.randint(new_w - crop_w + 1, (), generator=generator))
    image = image[:, top : top + crop_h, left : left + crop_w]
    boxes = target["boxes"] * torch.tensor([new_w / width, new_h / height] * 2)
    boxes = boxes - torch.tensor([left, top, left, top], dtype=boxes.dtype)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, crop_w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, crop_h)
    keep = ((boxes[:, 2] - boxes[:, 0]) >= 1) & ((boxes[:, 3] - boxes[:, 1]) >= 1)
    target = {**target, "boxes": boxes[keep], "labels": target["labels"][keep]}
    return image, target


class ScaleJitterDataset(Dataset):
    """A detection dataset whose items go through :func:`scale_jitter` with a fresh scale each time."""

    def __init__(self, dataset: Dataset, *, size: int, scale_range: tuple[float, float] = DEFAULT_SCALE_RANGE) -> None:
        low, high = scale_range
        if not (0 < low <= high and math.isfinite(high)):
            raise ValueError(f"scale jitter range must satisfy 0 < min <= max, got {scale_range}")
        self.dataset, self.size, self.scale_range = dataset, size, (float(low), float(high))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, target = self.dataset[index]
        low, high = self.scale_range
        scale = low + (high - low) * float(torch.rand(()))
        return scale_jitter(image, target, size=self.size, scale=scale)

    def __getattr__(self, name: str):
        # the wrapped set's class names, COCO data, report... (only called for missing attributes)
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def skip_train_resize_(detector) -> None:
    """In place: the detector's transform leaves training images at their size (already jittered)."""
    detector.transform._skip_resize = True  # torchvision's switch (GeneralizedRCNNTransform, train mode only)
