"""The RetinaNet task for the shared trainer (:class:`sasa.engine.Trainer`): one step and one evaluation."""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from sasa.detection.data import CocoDetection
from sasa.detection.evaluate import METRIC_NAMES, coco_evaluate, detections_to_coco
from sasa.engine import DistributedContext, StepResult, broadcast_object
from sasa.errors import UserError


def _to_device(targets: list[dict], device: torch.device) -> list[dict]:
    return [{key: value.to(device, non_blocking=True) for key, value in target.items()} for target in targets]


class DetectionTask:
    """One RetinaNet step (focal loss + L1 box loss, torchvision's) and COCO evaluation."""

    best_metric = "val_AP"
    best_mode = "max"

    def __init__(self, val_set: CocoDetection) -> None:
        self.val_set = val_set

    def train_step(self, model: nn.Module, batch, device: torch.device) -> StepResult:
        images, targets = batch
        losses = model([image.to(device, non_blocking=True) for image in images], _to_device(targets, device))
        loss = losses["classification"] + losses["bbox_regression"]
        n = len(images)
        sums = {"loss": loss.item() * n, "cls_loss": losses["classification"].item() * n,
                "box_loss": losses["bbox_regression"].item() * n}
        return StepResult(loss, batch_size=n, sums=sums)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, ctx: DistributedContext, autocast) -> dict[str, float]:
        """Each rank predicts its shard; rank 0 runs COCOeval on all of them and shares the metrics."""
        model.eval()  # the Trainer gave every rank rank 0's weights and BatchNorm statistics (the saved ones)
        results = []
        for images, targets in loader:
            with autocast():
                outputs = model([image.to(ctx.device, non_blocking=True) for image in images])
            # autocast may leave boxes and scores in bf16/fp16; labels stay integers
            outputs = [{key: value.float() if value.is_floating_point() else value for key, value in output.items()}
                       for output in outputs]
            ids = [int(target["image_id"]) for target in targets]
            results += detections_to_coco(outputs, ids, self.val_set.label_to_category_id)
        if ctx.is_distributed:
            gathered: list[Any] = [None] * ctx.world_size
            dist.all_gather_object(gathered, results)
            results = [result for part in gathered for result in part]
        metrics = None
        if ctx.is_main:
            metrics = coco_evaluate(self.val_set.coco, results, image_ids=[image["id"] for image in self.val_set.images])
        metrics = broadcast_object(metrics, ctx)
        return {f"val_{name}": metrics[name] for name in METRIC_NAMES}


def check_same_categories(train_set: CocoDetection, val_set: CocoDetection) -> None:
    """Raise unless both sets have the same categories: ids (what predictions are written as) and names."""
    train_cats = [(c["id"], c["name"]) for c in train_set.categories]
    val_cats = [(c["id"], c["name"]) for c in val_set.categories]
    if train_cats != val_cats:
        raise UserError(f"train and val categories (id, name) differ: {train_set.report.ann_file} has {train_cats}, "
                         f"{val_set.report.ann_file} has {val_cats}")
