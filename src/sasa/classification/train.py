"""Classification training: the task's pieces for :func:`sasa.engine.launch`."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sasa.classification.checkpoint import classifier_metadata
from sasa.classification.data import collate_skipping, load_classification_data, subset
from sasa.classification.options import ClassificationOptions, recipe_for
from sasa.classification.task import ClassificationTask
from sasa.engine import DistributedContext, ProgressReporter, TrainingJob, TrainingResult, launch, resume_options
from sasa.models import create_model


def prepare(options: ClassificationOptions, ctx: DistributedContext, progress: ProgressReporter) -> TrainingJob:
    """Load the data and say how to build the model (nothing is written)."""
    data = load_classification_data(options.data, img_size=options.img_size)
    train_set = subset(data.train, options.limit_train, seed=0)
    val_set = subset(data.val, options.limit_val, seed=0)
    classes = len(data.class_names)
    return TrainingJob(
        train_set=train_set, val_set=val_set, collate_fn=collate_skipping,
        build_model=lambda: create_model(
            options.model, num_classes=classes, in_chans=data.in_chans, **(options.model_opt or {})
        ),
        task=ClassificationTask(num_classes=classes, label_smoothing=options.label_smoothing),
        metadata=classifier_metadata(options.model, data, img_size=options.img_size, model_opt=options.model_opt),
        record={"recipe": recipe_for(options.data), "num_classes": classes, "class_names": data.class_names,
                "train_images": len(train_set), "val_images": len(val_set)},
        description=(
            f"training {options.model} on {data.name}: {len(train_set)} train / {len(val_set)} val images, "
            f"{classes} classes, {ctx.world_size} process(es) on {ctx.device}, batch {options.batch_size}, "
            f"lr {options.peak_lr:.4g}, {options.epochs} epochs"
        ),
    )


def train(options: ClassificationOptions, *, out: str | Path, force: bool = False) -> TrainingResult | None:
    """Train a classifier into the new run directory ``out``; the result on rank 0, None elsewhere."""
    return launch(options, prepare, task="classification", out=out, force=force)


def resume(out: str | Path, **given: Any) -> TrainingResult | None:
    """Continue the run in ``out``; ``given`` may change epochs, stop_after, workers, device, quiet."""
    options = resume_options(ClassificationOptions, out, given, task="classification")
    return launch(options, prepare, task="classification", out=out, resume=True)
