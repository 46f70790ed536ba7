"""Evaluate a classification checkpoint on a dataset (``sasa eval``)."""
from __future__ import annotations

import time
from typing import Any

from sasa.classification.checkpoint import load_checkpoint
from sasa.classification.data import build_eval_transform, collate_skipping, load_classification_data, subset
from sasa.classification.task import ClassificationTask
from sasa.engine import DistributedContext, autocast_factory, make_loader, resolve_device
from sasa.errors import UserError


def _short(names: list[str], limit: int = 6) -> str:
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def evaluate_checkpoint(checkpoint: str, data: str, *, model: str | None = None, batch_size: int = 128,
                        workers: int = 0, limit_val: int | None = None, device: str = "auto",
                        amp: bool = False) -> dict[str, Any]:
    """Top-1 (top-5 with more than 5 classes) and loss of ``checkpoint`` on the validation split of ``data``."""
    device = resolve_device(device)
    net, meta = load_checkpoint(checkpoint, device=device, expect_model=model)
    dataset = load_classification_data(data, img_size=int(meta["img_size"]), train=False)
    checkpoint_kind, data_kind = meta["preprocess"].get("kind"), dataset.preprocess.get("kind")
    if dataset.class_names != list(meta["class_names"]):
        raise UserError(
            f"checkpoint classes ({len(meta['class_names'])}: {_short(meta['class_names'])}) differ from "
            f"the data's ({len(dataset.class_names)}: {_short(dataset.class_names)})"
        )
    if data_kind == "folder":
        # image files are prepared as the checkpoint's own data was (as `sasa predict` does): a digits
        # checkpoint is evaluated on an ImageFolder of digit images
        dataset.val.transform = build_eval_transform(meta["preprocess"])
    elif checkpoint_kind != data_kind:
        raise UserError(f"checkpoint was trained on {checkpoint_kind} data: evaluate it on an ImageFolder, "
                        f"not on the {data_kind} arrays")
    val_set = subset(dataset.val, limit_val, seed=0)
    ctx = DistributedContext(device=device)
    loader = make_loader(val_set, batch_size=batch_size, train=False, ctx=ctx, workers=workers,
                         collate_fn=collate_skipping)
    start = time.perf_counter()
    task = ClassificationTask(num_classes=len(dataset.class_names))
    metrics = task.evaluate(net, loader, ctx, autocast_factory(device, amp))
    skipped = int(metrics.get("val_skipped_images", 0))
    return {"checkpoint": str(checkpoint), "model": meta["model"], "data": dataset.name,
            "images": len(val_set) - skipped, **{f"top{k}": metrics[f"val_top{k}"] for k in task.topk},
            "loss": metrics["val_loss"], "skipped_images": skipped, "epoch": meta.get("epoch"),
            "seconds": time.perf_counter() - start}
