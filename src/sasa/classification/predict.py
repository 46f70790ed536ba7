"""Top-k classes of image files with a classification checkpoint (``sasa predict``)."""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import UnidentifiedImageError

from sasa.classification.checkpoint import load_checkpoint
from sasa.classification.data import build_eval_transform
from sasa.engine import resolve_device
from sasa.errors import UserError
from sasa.images import open_rgb


def predict_images(checkpoint: str, images: list[str], *, topk: int | None = None, device: str = "auto") -> list[dict]:
    """For each image path: ``{"image": path, "topk": [{"class": name, "prob": p}, ...]}``, best first;
    ``topk`` None: 5, or every class of a checkpoint with fewer.

    Every file is read before the model runs: a missing or unreadable one fails first."""
    device = resolve_device(device)
    model, meta = load_checkpoint(checkpoint, device=device)
    names = list(meta["class_names"])
    topk = min(5, len(names)) if topk is None else topk
    if topk > len(names):
        raise UserError(f"--topk {topk} exceeds the checkpoint's {len(names)} classes")
    transform = build_eval_transform(meta["preprocess"])
    tensors = []
    for path in images:
        if not Path(path).is_file():
            raise UserError(f"image {path!r} does not exist")
        try:
            tensors.append(transform(open_rgb(path)))  # 16-bit images scaled, not clipped
        except (OSError, UnidentifiedImageError) as error:
            raise UserError(f"cannot read image {path!r}: {error}") from None
    with torch.no_grad():
        probs = torch.cat([model(batch.to(device)).float().softmax(1).cpu() for batch in torch.stack(tensors).split(64)])
    values, indices = probs.topk(topk, dim=1)
    return [{"image": path, "topk": [{"class": names[i], "prob": v} for v, i in zip(p, idx)]}
            for path, p, idx in zip(images, values.tolist(), indices.tolist())]
