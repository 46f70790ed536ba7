"""Detect objects in image files and draw them (``sasa detect``)."""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import UnidentifiedImageError
from torchvision.transforms.functional import pil_to_tensor, to_pil_image

from sasa.detection.checkpoint import load_checkpoint
from sasa.detection.draw import draw_detections, output_paths
from sasa.engine import atomic_write_json, check_output_dir, resolve_device
from sasa.errors import UserError
from sasa.images import open_rgb


def read_images(paths: list[str]) -> list[tuple[Path, torch.Tensor]]:
    """Every image as (path, (3, H, W) uint8), read before any work: a bad one fails first."""
    loaded = []
    for path in paths:
        try:
            loaded.append((Path(path), pil_to_tensor(open_rgb(path))))  # 16-bit images scaled, not clipped
        except FileNotFoundError:
            raise UserError(f"image {path!r} does not exist") from None
        except (UnidentifiedImageError, OSError) as error:
            raise UserError(f"cannot read image {path!r}: {error}") from None
    return loaded


def detect_images(checkpoint: str, images: list[str], *, out: str | Path, score_thresh: float = 0.3,
                  device: str = "auto") -> list[dict]:
    """Draw the detections scoring at least ``score_thresh`` on each image into ``out`` (one PNG each, named
    by :func:`~sasa.detection.draw.output_paths`: distinct, never an input) and write ``out/detections.json``;
    returns its records (image, output, detections). The detector's own score threshold becomes
    ``score_thresh``, so a lower one than the checkpoint's (0.05) shows the lower-scoring boxes too."""
    out = Path(out)
    check_output_dir(out)
    device = resolve_device(device)
    loaded = read_images(images)
    model, metadata = load_checkpoint(checkpoint, device=device, score_thresh=score_thresh)
    out.mkdir(parents=True, exist_ok=True)
    names, records = metadata["class_names"], []
    with torch.no_grad():
        for (path, image), target in zip(loaded, output_paths(images, out)):
            detection = model([image.float().div(255).to(device)])[0]
            detection = {key: value.cpu() for key, value in detection.items()}
            to_pil_image(draw_detections(image, detection, names, score_thresh=score_thresh)).save(target)
            keep = detection["scores"] >= score_thresh
            records.append({"image": str(path), "output": str(target), "detections": [
                {"label": names[label], "score": round(score, 4), "box_xyxy": [round(v, 1) for v in box]}
                for box, score, label in zip(detection["boxes"][keep].tolist(), detection["scores"][keep].tolist(),
                                             detection["labels"][keep].tolist())
            ]})
    atomic_write_json(out / "detections.json", records)
    return records
