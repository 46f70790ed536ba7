"""Draw detections (boxes, class names, scores) onto an image."""
from __future__ import annotations

import torch
from torchvision.utils import draw_bounding_boxes

PALETTE = ("red", "lime", "blue", "yellow", "cyan", "magenta", "orange", "white")


def draw_detections(
    image: torch.Tensor, detection: dict, class_names: list[str], *, score_thresh: float = 0.3
) -> torch.Tensor:
    """(3, H, W) uint8 image + one torchvision detection dict -> (3, H, W) uint8 with labelled boxes."""
    keep = detection["scores"] >= score_thresh
    boxes = detection["boxes"][keep].detach().cpu()
    labels = detection["labels"][keep].tolist()
    scores = detection["scores"][keep].tolist()
    if not labels:
        return image
    text = [f"{class_names[label]} {score:.2f}" for label, score in zip(labels, scores)]
    colours = [PALETTE[label % len(PALETTE)] for label in labels]
    width = max(1, round(max(image.shape[-2:]) / 256))
    return draw_bounding_boxes(image, boxes, labels=text, colors=colours, width=width)
