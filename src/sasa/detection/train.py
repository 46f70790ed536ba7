"""Detection training: the task's pieces for :func:`sasa.engine.launch`."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sasa.detection.checkpoint import detector_metadata
from sasa.detection.data import CocoDetection, collate_detection
from sasa.detection.model import create_detector, load_backbone_weights_, resolve_detector_config
from sasa.detection.options import DetectionOptions
from sasa.detection.shapes import ensure_shapes
from sasa.detection.task import DetectionTask, check_same_categories
from sasa.detection.transforms import ScaleJitterDataset, skip_train_resize_
from sasa.engine import (
    DistributedContext,
    ProgressReporter,
    TrainingJob,
    TrainingResult,
    broadcast_object,
    launch,
    resume_options,
)
from sasa.errors import UserError


def data_paths(options: DetectionOptions) -> dict[str, str]:
    """Absolute image folders and annotation files of the train and val splits (generating shapes if needed)."""
    if options.data == "shapes":
        root = ensure_shapes(num_train=options.shapes_train, num_val=options.shapes_val, img_size=options.img_size,
                             seed=options.shapes_seed).resolve()
        return {"images": str(root / "train"), "ann": str(root / "annotations" / "instances_train.json"),
                "val_images": str(root / "val"), "val_ann": str(root / "annotations" / "instances_val.json")}
    return {key: os.path.abspath(getattr(options, key)) for key in ("images", "ann", "val_images", "val_ann")}


def prepare(options: DetectionOptions, ctx: DistributedContext, progress: ProgressReporter) -> TrainingJob:
    """Load (or generate) the data and say how to build the detector (nothing is written in the run)."""
    paths = data_paths(options) if ctx.is_main else None
    paths = broadcast_object(paths, ctx)  # rank 0 generated the shapes; the others read them
    train_set = CocoDetection(paths["images"], paths["ann"], train=True)
    val_set = CocoDetection(paths["val_images"], paths["val_ann"])
    check_same_categories(train_set, val_set)
    for dataset in (train_set, val_set):
        progress.info(dataset.report.summary())
    for dataset, what, ann in ((train_set, "training", paths["ann"]), (val_set, "validation", paths["val_ann"])):
        if len(dataset) == 0:  # checked now: an empty val set would fail only after the first epoch
            raise UserError(f"no usable {what} images in {ann}")
    config = resolve_detector_config(options.model, **options.detector_overrides())

    def build_model():
        model = create_detector(options.model, num_classes=train_set.num_classes, **options.detector_overrides())
        if options.scale_jitter:
            skip_train_resize_(model)  # the jittered crops are already at their training size
        return model

    def init_weights(model):
        source = load_backbone_weights_(model, options.backbone_weights)
        progress.info(f"backbone {model.config.backbone} from {options.backbone_weights} "
                      f"(a classifier trained on {source.get('data')!r})")

    jittered = train_set
    if options.scale_jitter:
        jittered = ScaleJitterDataset(train_set, size=config.max_size, scale_range=tuple(options.scale_jitter))
    return TrainingJob(
        train_set=jittered, val_set=val_set, collate_fn=collate_detection, build_model=build_model,
        init_weights=init_weights if options.backbone_weights else None,
        task=DetectionTask(val_set), metadata=detector_metadata(options.model, config, train_set),
        record={"data": paths, "data_report": {"train": train_set.report.to_dict(), "val": val_set.report.to_dict()}},
        description=(f"training {options.model} on {options.data}: {len(train_set)} train / {len(val_set)} val "
                     f"images, {ctx.world_size} process(es) on {ctx.device}, batch {options.batch_size}, "
                     f"lr {options.peak_lr:.4g}, {options.epochs} epochs"),
    )


def train(options: DetectionOptions, *, out: str | Path, force: bool = False) -> TrainingResult | None:
    """Train a detector into the new run directory ``out``; the result on rank 0, None elsewhere."""
    return launch(options, prepare, task="detection", out=out, force=force)


def resume(out: str | Path, **given: Any) -> TrainingResult | None:
    """Continue the run in ``out``; ``given`` may change epochs, stop_after, workers, device, quiet."""
    options = resume_options(DetectionOptions, out, given, task="detection")
    return launch(options, prepare, task="detection", out=out, resume=True)
