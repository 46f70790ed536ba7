"""The image-classification task for :class:`~sasa.engine.Trainer` (detection has its own task)."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

from sasa.engine.distributed import DistributedContext, all_reduce_sums
from sasa.engine.trainer import Autocast, StepResult
from sasa.errors import UserError


def reported_topk(num_classes: int) -> tuple[int, ...]:
    """Top-1, and top-5 where it means something: with 5 classes or fewer every label is in the top 5."""
    return (1,) + tuple(k for k in (5,) if k < num_classes)


class ClassificationTask:
    """Cross-entropy (optionally label-smoothed) training; top-k evaluation (:func:`reported_topk`).

    Batches are ``(images, labels, unreadable)`` as made by :func:`sasa.classification.data.collate_skipping`.
    Training batches are always full (unreadable images were replaced); in evaluation ``images`` is
    None when every image of the batch was unreadable.
    """

    best_metric = "val_top1"
    best_mode = "max"

    def __init__(self, *, num_classes: int, label_smoothing: float = 0.0) -> None:
        if label_smoothing > 0:
            from timm.loss import LabelSmoothingCrossEntropy

            self.criterion: nn.Module = LabelSmoothingCrossEntropy(smoothing=label_smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()
        self.eval_criterion = nn.CrossEntropyLoss(reduction="sum")
        self.topk = reported_topk(num_classes)

    def train_step(self, model: nn.Module, batch, device: torch.device) -> StepResult:
        images, labels, skipped = batch
        counts = {"skipped_images": skipped} if skipped else {}
        if images is None:
            raise RuntimeError("a training batch without images: the training set must replace unreadable images")
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        logits = model(images)
        loss = self.criterion(logits.float(), labels)
        n = labels.numel()
        correct = (logits.argmax(dim=1) == labels).sum().item()
        return StepResult(loss=loss, batch_size=n, sums={"loss": loss.item() * n, "acc": 100.0 * correct}, counts=counts)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, ctx: DistributedContext, autocast: Autocast) -> dict[str, float]:
        sums = self.evaluate_sums(model, loader, ctx.device, autocast)
        totals = all_reduce_sums(sums, ctx)
        if not totals["count"]:  # the same on every rank, so all of them stop here
            raise UserError(f"no readable image to evaluate: all {int(totals['skipped'])} images are unreadable")
        n = totals["count"]
        result = {"val_loss": totals["loss"] / n}
        for k in self.topk:
            result[f"val_top{k}"] = 100.0 * totals[f"top{k}"] / n
        if totals["skipped"]:
            result["val_skipped_images"] = int(totals["skipped"])
        return result

    @torch.no_grad()
    def evaluate_sums(self, model: nn.Module, loader: DataLoader, device: torch.device, autocast: Autocast) -> dict[str, float]:
        """Summed loss, top-k hits, image count and skipped images over this process's batches."""
        sums = {"loss": 0.0, "count": 0.0, "skipped": 0.0, **{f"top{k}": 0.0 for k in self.topk}}
        for images, labels, skipped in loader:
            sums["skipped"] += skipped
            if images is None:
                continue
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with autocast():
                logits = model(images)
            logits = logits.float()
            sums["loss"] += self.eval_criterion(logits, labels).item()
            sums["count"] += labels.numel()
            top = logits.topk(min(max(self.topk), logits.shape[1]), dim=1).indices
            hits = top == labels[:, None]
            for k in self.topk:
                sums[f"top{k}"] += hits[:, :k].any(dim=1).sum().item()
        return sums
