"""COCO box mAP with pycocotools: predictions -> COCO results -> COCOeval."""
from __future__ import annotations

import contextlib
import io

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn

from sasa.errors import UserError

# COCOeval.stats[0..5]
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def coco_from_dict(data: dict) -> COCO:
    """A pycocotools COCO index over an in-memory dataset dict, without its console chatter."""
    coco = COCO()
    coco.dataset = {"info": {}, **data}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_evaluate(ground_truth: dict | COCO, results: list[dict], *, image_ids=None) -> dict[str, float]:
    """Box AP, AP50, AP75, APs, APm, APl (in [0, 1]; -1 where pycocotools has no ground truth in range).

    ``results``: COCO results, ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``; with none,
    a metric is 0 where it has ground truth and still -1 (undefined) where it has none.
    ``image_ids``: evaluate on these images only (default: every ground-truth image); none is an error.
    """
    coco_gt = ground_truth if isinstance(ground_truth, COCO) else coco_from_dict(ground_truth)
    if not (coco_gt.getImgIds() if image_ids is None else list(image_ids)):
        raise UserError("no images to evaluate on (an empty or entirely dropped image set has no mAP)")
    with contextlib.redirect_stdout(io.StringIO()):
        if results:
            coco_dt = coco_gt.loadRes(results)
        else:  # loadRes rejects an empty list; an empty result index lets COCOeval say what is undefined
            coco_dt = coco_from_dict({"images": coco_gt.dataset["images"], "categories": coco_gt.dataset["categories"],
                                      "annotations": []})
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        if image_ids is not None:
            evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(value) for name, value in zip(METRIC_NAMES, evaluator.stats[:6])}


def detections_to_coco(outputs: list[dict], image_ids, label_to_category_id) -> list[dict]:
    """torchvision detections (xyxy boxes, contiguous labels) -> COCO results (xywh, category ids)."""
    results = []
    for output, image_id in zip(outputs, image_ids):
        boxes = output["boxes"].detach().cpu()
        boxes = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        for box, score, label in zip(boxes, output["scores"].tolist(), output["labels"].tolist()):
            results.append({"image_id": int(image_id), "category_id": label_to_category_id[label],
                            "bbox": [round(v, 2) for v in box], "score": float(score)})
    return results


@torch.no_grad()
def predict(model: nn.Module, loader, *, device: torch.device, label_to_category_id, progress=None) -> list[dict]:
    """Run the detector over ``loader`` (batches of (images, targets)) and return COCO results."""
    model.eval()
    results = []
    for images, targets in loader if progress is None else progress(loader):
        outputs = model([image.to(device, non_blocking=True) for image in images])
        image_ids = [int(target["image_id"]) for target in targets]
        results += detections_to_coco(outputs, image_ids, label_to_category_id)
    return results


def evaluate_detector(model: nn.Module, dataset, loader, *, device: torch.device, progress=None) -> dict[str, float]:
    """COCO metrics of ``model`` on a :class:`~sasa.detection.data.CocoDetection` set."""
    if len(dataset) == 0:
        skipped = ", ".join(f"{reason}: {count}" for reason, count in sorted(dataset.report.skipped.items()))
        raise UserError(f"{dataset.report.ann_file}: no usable images to evaluate on (skipped: {skipped or 'none'})")
    results = predict(model, loader, device=device, label_to_category_id=dataset.label_to_category_id,
                      progress=progress)
    return coco_evaluate(dataset.coco, results, image_ids=[image["id"] for image in dataset.images])


def evaluate_checkpoint(checkpoint: str, *, images: str | None = None, ann: str | None = None, batch_size: int = 8,
                        device: str = "auto", report=None) -> dict:
    """COCO metrics of a detection checkpoint on ``images``/``ann`` (default: the validation set recorded
    in the run directory beside the checkpoint). ``report(text)`` receives the data loading summary."""
    from sasa.detection.checkpoint import load_checkpoint
    from sasa.detection.data import CocoDetection, collate_detection
    from sasa.engine import resolve_device

    device = resolve_device(device)
    model, metadata = load_checkpoint(checkpoint, device=device)
    images, ann = _data_for_checkpoint(checkpoint, images, ann)
    dataset = CocoDetection(images, ann)
    if report is not None:
        report(dataset.report.summary())
    if dataset.label_to_category_id != metadata["category_ids"]:
        raise UserError(f"{ann}: category ids {dataset.label_to_category_id} differ from the checkpoint's "
                        f"{metadata['category_ids']}")
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate_detection)
    metrics = evaluate_detector(model, dataset, loader, device=device)
    return {"checkpoint": str(checkpoint), "images": images, "ann": ann, "num_images": len(dataset), **metrics}


def _data_for_checkpoint(checkpoint: str, images: str | None, ann: str | None) -> tuple[str, str]:
    """--images/--ann, or the validation set recorded in the run directory beside the checkpoint."""
    import json
    from pathlib import Path

    if images and ann:
        return images, ann
    if images or ann:
        raise UserError("give both --images and --ann, or neither (to use the run's validation set)")
    config = Path(checkpoint).parent / "config.json"
    if not config.is_file():
        raise UserError(f"no --images/--ann given and no run config at {str(config)!r} to find the validation set")
    try:
        paths = json.loads(config.read_text())["data"]
        return paths["val_images"], paths["val_ann"]
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{str(config)!r} does not name a validation set ({error!r}); give --images and --ann") from None
