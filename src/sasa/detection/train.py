"""Detection training: a RetinaNet task for the shared engine (:mod:`sasa.engine`), and the recipe.

The run directory, checkpoints, resume, progress output and DDP are the engine's
(:class:`sasa.engine.Trainer`); this module says what one detection step and one evaluation are,
which data to load, and the default recipes. Every option is one flat dict, saved as the run's
``config.json``; ``--resume`` rebuilds the run from it.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from sasa.detection.data import CocoDetection, collate_detection
from sasa.detection.evaluate import METRIC_NAMES, coco_evaluate, detections_to_coco
from sasa.detection.model import create_detector, load_backbone_weights_, resolve_detector_config
from sasa.detection.transforms import DEFAULT_SCALE_RANGE, ScaleJitterDataset, skip_train_resize_
from sasa.detection.shapes import ensure_shapes
from sasa.engine import (
    DistributedContext,
    ProgressReporter,
    RunDir,
    StepResult,
    TrainConfig,
    Trainer,
    broadcast_object,
    cleanup_distributed,
    init_distributed,
    load_weights,
    make_loader,
    seed_everything,
    wrap_model,
)
from sasa.errors import UserError

# The embedded default, sized for ~15 CPU minutes: generated shapes, a ResNet-26 RetinaNet with a
# 64-channel FPN and heads, 96×96 images, anchors from 12 px, AdamW from scratch (no pretrained
# weights exist). 12 epochs, not 6: the attention backbone needs about twice the steps of the conv one
# (6 epochs: sa_resnet26 AP50 0.23, conv 0.65; 12 epochs: sa_resnet26 0.52). Measured numbers: see the README.
SHAPES_RECIPE: dict[str, Any] = {
    "data": "shapes", "model": "retinanet_resnet26", "shapes_train": 1000, "shapes_val": 200, "shapes_seed": 0,
    "img_size": 96, "fpn_channels": 64, "anchor_size": 12,
    "epochs": 12, "batch_size": 8, "opt": "adamw", "lr": 1e-3, "weight_decay": 0.05, "warmup_epochs": 0.5,
    "grad_clip": 10.0,
}
# Real COCO, the paper's appendix A.3 (SPEC §5): 150 epochs, global batch 64, lr warmed up linearly from 0 to
# 0.12 over 1 epoch then cosine, multiscale jitter, crop to a maximum dimension of 640, flip with p=0.5 (always on
# in training). Assumptions (not stated in the paper): SGD with Nesterov momentum 0.9, weight decay 1e-4 (the
# usual RetinaNet value), no gradient clipping, jitter scales 0.8–1.2 (sasa.detection.transforms).
COCO_RECIPE: dict[str, Any] = {
    "data": "coco", "model": "retinanet_sa_resnet50_attnhead", "img_size": 640, "fpn_channels": 256,
    "anchor_size": 32, "epochs": 150, "batch_size": 64, "opt": "sgd", "lr": 0.12, "weight_decay": 1e-4,
    "warmup_epochs": 1.0, "grad_clip": None, "scale_jitter": list(DEFAULT_SCALE_RANGE),
}
COMMON_DEFAULTS: dict[str, Any] = {
    "backbone": None, "head": None, "head_residual": None,
    "kernel_size": None, "num_heads": None, "backend": None,
    "min_size": None, "max_size": None, "amp": False, "seed": 0, "workers": 0, "sync_bn": True,
    "stop_after": None, "images": None, "ann": None, "val_images": None, "val_ann": None,
    "backbone_weights": None,  # a `sasa train` classifier checkpoint of the backbone model
    "scale_jitter": None,  # [min, max] multiscale jitter + crop to max_size (coco recipe: 0.8, 1.2); None: off
}


def resolve_options(given: dict[str, Any]) -> dict[str, Any]:
    """The full option dict: the recipe of ``given["data"]`` overridden by every non-None given value."""
    data = given.get("data") or "shapes"
    if data not in ("shapes", "coco"):
        raise ValueError(f"data must be 'shapes' or 'coco', got {data!r}")
    recipe = SHAPES_RECIPE if data == "shapes" else COCO_RECIPE
    options = {**COMMON_DEFAULTS, **recipe}
    options.update({key: value for key, value in given.items() if value is not None})
    if data == "coco":
        for key in ("images", "ann", "val_images", "val_ann"):
            if not options.get(key):
                flag = "--" + key.replace("_", "-")
                raise ValueError(f"--data coco needs --images, --ann, --val-images and --val-ann (missing {flag})")
    options["min_size"] = options["min_size"] or options["img_size"]
    options["max_size"] = options["max_size"] or options["img_size"]
    if options["scale_jitter"] is not None:
        low, high = options["scale_jitter"]
        if not 0 < low <= high:
            raise ValueError(f"scale_jitter must be [min, max] with 0 < min <= max, got {options['scale_jitter']}")
        options["scale_jitter"] = [float(low), float(high)]
    detector_overrides(options)  # validates the model options now, before any data is read
    return options


def detector_overrides(options: dict[str, Any]) -> dict[str, Any]:
    """The DetectorConfig overrides held in ``options``; raises for a bad model name or value."""
    overrides = {key: options.get(key) for key in (
        "backbone", "head", "kernel_size", "num_heads", "backend", "min_size", "max_size", "fpn_channels", "anchor_size",
        "head_residual",
    )}
    resolve_detector_config(options["model"], **overrides)
    return overrides


def data_paths(options: dict[str, Any]) -> dict[str, str]:
    """Image folders and annotation files of the train and val splits (generating shapes if needed)."""
    if options["data"] == "shapes":
        root = ensure_shapes(num_train=options["shapes_train"], num_val=options["shapes_val"],
                             img_size=options["img_size"], seed=options["shapes_seed"])
        return {"images": str(root / "train"), "ann": str(root / "annotations" / "instances_train.json"),
                "val_images": str(root / "val"), "val_ann": str(root / "annotations" / "instances_val.json")}
    return {key: options[key] for key in ("images", "ann", "val_images", "val_ann")}


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
        model.eval()
        if ctx.is_distributed:
            # BatchNorm statistics drift apart per rank on CPU (no SyncBatchNorm there): evaluate rank 0's,
            # the ones saved in the checkpoint, everywhere
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)
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


def checkpoint_metadata(options: dict[str, Any], model: nn.Module, dataset: CocoDetection) -> dict[str, Any]:
    """What :func:`load_detector` needs to rebuild the model, stored in every safetensors file."""
    return {
        "task": "detection", "model": options["model"], "num_classes": dataset.num_classes,
        "detector_config": dataclasses.asdict(model.config), "class_names": dataset.class_names,
        "category_ids": dataset.label_to_category_id,
    }


def load_detector(checkpoint: str | Path, *, device: torch.device | str = "cpu", **overrides):
    """(model in eval mode, metadata) from a detection safetensors file written by ``sasa detect-train``."""
    state, metadata = load_weights(checkpoint)
    if metadata.get("task") != "detection":
        raise ValueError(f"checkpoint {str(checkpoint)!r} is not a detection checkpoint (task: {metadata.get('task')!r})")
    config = {**metadata["detector_config"], **{k: v for k, v in overrides.items() if v is not None}}
    model = create_detector(metadata["model"], num_classes=metadata["num_classes"], **config)
    model.load_state_dict(state)
    return model.to(device).eval(), metadata


def train(options: dict[str, Any], *, out: str, resume: bool = False, force: bool = False, device: str = "auto",
          quiet: bool = False) -> list[dict[str, Any]]:
    """Train a detector with the resolved ``options`` into run directory ``out`` (or resume it).

    Returns every epoch's metrics row on rank 0, and [] on the other ranks.
    """
    ctx = init_distributed(device)
    try:
        if resume:
            run = RunDir.open_existing(out)
            # the saved run decides everything but where to stop and how many loader workers to use
            saved = run.read_config()["options"]
            options = {**saved, "stop_after": options.get("stop_after"),
                       "workers": saved["workers"] if options.get("workers") is None else options["workers"]}
        else:
            run = RunDir.create(out, force=force, create=ctx.is_main)
        progress = ProgressReporter(enabled=ctx.is_main, quiet=quiet)
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

        seed_everything(options["seed"])
        model = create_detector(options["model"], num_classes=train_set.num_classes, **detector_overrides(options))
        if options.get("backbone_weights") and not resume:  # a resumed run loads its own checkpoint
            source = load_backbone_weights_(model, options["backbone_weights"])
            progress.info(f"backbone {model.config.backbone} from {options['backbone_weights']} "
                          f"(a classifier trained on {source.get('data')!r})")
        if options.get("scale_jitter"):
            skip_train_resize_(model)
        if not resume and ctx.is_main:
            run.write_config({"options": options, "data": paths, "world_size": ctx.world_size,
                              "detector_config": dataclasses.asdict(model.config),
                              "data_report": {"train": train_set.report.to_dict(), "val": val_set.report.to_dict()}})
        metadata = checkpoint_metadata(options, model, train_set)
        model = wrap_model(model, ctx, sync_bn=options["sync_bn"] and ctx.device.type == "cuda")  # GPU-only layer
        batch = options["batch_size"]
        if options.get("scale_jitter"):
            train_set = ScaleJitterDataset(train_set, size=options["max_size"], scale_range=tuple(options["scale_jitter"]))
        train_loader = make_loader(train_set, batch_size=batch, train=True, ctx=ctx, seed=options["seed"],
                                   workers=options["workers"], collate_fn=collate_detection)
        val_loader = make_loader(val_set, batch_size=batch, train=False, ctx=ctx, workers=options["workers"],
                                 collate_fn=collate_detection)
        seed_everything(options["seed"] + ctx.rank)
        config = TrainConfig(
            epochs=options["epochs"], lr=options["lr"], weight_decay=options["weight_decay"], opt=options["opt"],
            warmup_epochs=options["warmup_epochs"], amp=options["amp"], grad_clip=options["grad_clip"],
            seed=options["seed"], stop_after=options["stop_after"],
        )
        trainer = Trainer(model=model, task=DetectionTask(val_set), train_loader=train_loader, val_loader=val_loader,
                          config=config, run=run, ctx=ctx, progress=progress, metadata=metadata)
        if resume:
            done = trainer.resume()
            progress.info(f"resuming {out} after epoch {done}/{config.epochs}")
        rows = trainer.fit()
        return rows if ctx.is_main else []  # only rank 0 reports
    finally:
        cleanup_distributed()
