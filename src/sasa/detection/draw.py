"""Draw detections (boxes, class names, scores) onto an image, and name the drawn files."""
from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Iterator, Sequence

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


def _names(path: Path) -> Iterator[str]:
    """Candidate output stems for ``path``: ``x``, then ``x_jpg``, then ``x_jpg_2``, ``x_jpg_3``, ..."""
    yield path.stem
    base = f"{path.stem}_{path.suffix.lstrip('.')}" if path.suffix else path.stem
    if base != path.stem:
        yield base
    for index in itertools.count(2):
        yield f"{base}_{index}"


def output_paths(images: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                 reserved: Sequence[str] = ("detections.json",)) -> list[Path]:
    """One PNG path in ``out`` per input image: distinct, and never one of the inputs or ``reserved`` files.

    ``a/x.png a/x.jpg b/x.png`` -> ``x.png``, ``x_jpg.png``, ``x_png.png``; ``photo.png`` with ``out="."`` ->
    ``photo_png.png`` (``photo.png`` is the input).
    """
    out = Path(out)
    taken = {Path(os.path.abspath(out / name)) for name in reserved}
    taken |= {Path(os.path.abspath(image)) for image in images}  # an input is never overwritten
    taken |= {Path(os.path.realpath(image)) for image in images}  # ... also when reached through a link
    paths = []
    for image in images:
        for name in _names(Path(image)):
            target = out / f"{name}.png"
            if Path(os.path.abspath(target)) not in taken and Path(os.path.realpath(target)) not in taken:
                break
        taken.add(Path(os.path.abspath(target)))
        paths.append(target)
    return paths
