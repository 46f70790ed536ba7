"""torchvision's detection resize/normalise transform, with every resized side at least one pixel.

``GeneralizedRCNNTransform`` scales an image by ``min(min_size / short side, max_size / long side)``
and floors the result: a 1000×5 image at ``max_size=96`` becomes 96×0 and ``interpolate`` fails.
:class:`ClampedResizeTransform` computes the same size and clamps each side to ≥ 1 px, so very
wide or tall images (from ``sasa detect`` or inside a COCO file) resize instead of crashing.
"""
from __future__ import annotations

import math

import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform, _resize_image_and_masks, resize_boxes


class ClampedResizeTransform(GeneralizedRCNNTransform):
    """``GeneralizedRCNNTransform`` whose resize never produces a side of 0 px (same sizes otherwise)."""

    def resize(self, image: torch.Tensor, target: dict | None = None):
        if self.fixed_size is not None or (self.training and self._skip_resize):
            return super().resize(image, target)
        height, width = image.shape[-2:]
        size = self.torch_choice(self.min_size) if self.training else self.min_size[-1]
        scale = min(size / min(height, width), self.max_size / max(height, width))
        # torchvision's own output size is floor(side · scale) (interpolate with recompute_scale_factor)
        out_width, out_height = (max(1, math.floor(side * scale)) for side in (width, height))
        resized, target = _resize_image_and_masks(image, size, self.max_size, target, (out_width, out_height))
        if target is not None:
            target["boxes"] = resize_boxes(target["boxes"], (height, width), resized.shape[-2:])
        return resized, target
