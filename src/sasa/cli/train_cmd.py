"""``sasa train``, ``sasa eval`` and ``sasa predict``: image classification from the command line.

Single process::      sasa train --model resnet26 --data digits --out runs/r26
Several processes::   torchrun --nproc_per_node=2 -m sasa train --model resnet26 --data digits --out runs/r26
Continue a run::      sasa train --resume runs/r26

Every default that depends on the data comes from a recipe (:data:`RECIPES`): ImageFolder data get
the paper's ImageNet recipe, the embedded ``digits`` set a scaled-down one.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import types
import warnings
from pathlib import Path
from typing import Any

import torch

from sasa.cli.options import fraction, non_negative_float, non_negative_int, positive_float, positive_int
from sasa.classification.data import build_eval_transform, collate_skipping, load_classification_data, subset
from sasa.engine import (
    ProgressReporter,
    RunDir,
    TrainConfig,
    Trainer,
    atomic_write_json,
    barrier,
    cleanup_distributed,
    init_distributed,
    load_weights,
    make_loader,
    resolve_device,
    seed_everything,
    wrap_model,
)
from sasa.classification.task import ClassificationTask
from sasa.models import create_model
from sasa.models.config import MODEL_CONFIGS
from sasa.models.registry import resolve_config

# Paper §4.1 (Ramachandran et al. 2019, ImageNet; as recalled, check the paper before quoting): SGD
# with Nesterov momentum 0.9, 90 epochs, batch 4096 with lr 1.6 (= 0.1 × batch / 256), linear
# warm-up then cosine decay, label smoothing 0.1, weight decay 1e-4, random-resized crop 224 + flip,
# evaluation at a 224 centre crop. We keep the lr-per-256-images rule and a batch of 256 per run.
# digits: the same structure scaled down to 1437 8×8 images on a CPU: AdamW (robust without a tuned
# lr sweep on so few steps), per-step cosine with one warm-up epoch, random shifts instead of crops.
RECIPES: dict[str, dict[str, Any]] = {
    "imagenet": dict(
        epochs=90, batch_size=256, lr_per_256=0.1, weight_decay=1e-4, warmup_epochs=5.0, label_smoothing=0.1,
        img_size=224, opt="sgd", workers=min(8, os.cpu_count() or 1),
    ),
    "digits": dict(
        epochs=10, batch_size=64, lr_per_256=None, lr=2e-3, weight_decay=0.05, warmup_epochs=1.0,
        label_smoothing=0.0, img_size=32, opt="adamw", workers=0,
    ),
}
# options a resumed run may change; every other one comes from its config.json
RESUME_OVERRIDES = ("epochs", "stop_after", "workers", "quiet", "device")
TRAIN_OPTIONS = (
    "model", "data", "epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "label_smoothing", "img_size",
    "workers", "seed", "device", "amp", "opt", "sync_bn", "ema", "ema_decay", "grad_clip", "limit_train",
    "limit_val", "stop_after", "quiet",
)
MIN_IMG_SIZE_ATTENTION = 32  # attention stem + 4 stages halve the image 5 times; 2×2 pooling needs ≥ 2 px


def _one_line_error(parser: argparse.ArgumentParser, message: str):
    """argparse errors as one line (no usage dump), exit code 2, like the other user errors."""
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    sys.exit(2)


def _parser(subparsers, name: str, **kwargs) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, **kwargs)
    parser.error = types.MethodType(_one_line_error, parser)
    return parser


def add_parser(subparsers) -> None:
    train = _parser(
        subparsers, "train", help="train a classifier (also under torchrun)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Train a classifier on DATA and write a run directory: config.json, metrics.csv/.jsonl, curves.png,\n"
            "last.safetensors, best.safetensors, state.pt.\n\n"
            "DATA: 'digits' (embedded 8x8 digits, 1437 train / 360 val, no download) or a folder\n"
            "DATA/train/CLASS/IMAGE + DATA/val/CLASS/IMAGE. Unreadable image files are counted with a warning\n"
            "(train_skipped_images / val_skipped_images): replaced by one of their class in training, skipped in\n"
            "evaluation.\n\n"
            "Options left out take the value of the data's recipe (--lr: lr, or lr_per_256 × batch / 256):\n"
            + "\n".join(f"  {name}: {recipe}" for name, recipe in RECIPES.items())
            + "\n\nSeveral processes: torchrun --nproc_per_node=N -m sasa train ... (gloo on CPU, nccl on CUDA)."
        ),
    )
    train.add_argument("--model", help="model name (see `sasa models`)")
    train.add_argument("--data", help="'digits' or an ImageFolder root with train/ and val/")
    train.add_argument("--out", help="run directory to create (refused if it exists, see --force/--resume)")
    train.add_argument("--resume", metavar="DIR", help="continue the run in DIR after its last completed epoch")
    train.add_argument("--force", action="store_true", help="overwrite the run files of an existing --out")
    train.add_argument("--epochs", type=positive_int)
    train.add_argument("--batch-size", type=positive_int, help="global batch (split over processes)")
    train.add_argument("--lr", type=positive_float, help="peak lr (default: recipe; ImageNet: 0.1 × batch/256)")
    train.add_argument("--weight-decay", type=non_negative_float)
    train.add_argument("--warmup-epochs", type=non_negative_float)
    train.add_argument("--label-smoothing", type=fraction)
    train.add_argument("--img-size", type=positive_int)
    train.add_argument("--opt", choices=("sgd", "adamw"), help="sgd: momentum 0.9, Nesterov")
    train.add_argument("--workers", type=non_negative_int, help="data-loading processes per training process")
    train.add_argument("--seed", type=non_negative_int)
    train.add_argument("--device", choices=("auto", "cpu", "cuda"))
    train.add_argument("--amp", action="store_const", const=True, help="mixed precision (bf16 on CPU, fp16 on CUDA)")
    train.add_argument("--sync-bn", action="store_const", const=True, help="SyncBatchNorm under DDP (CUDA only)")
    train.add_argument("--ema", action="store_const", const=True, help="evaluate and save an EMA of the weights")
    train.add_argument("--ema-decay", type=fraction)
    train.add_argument("--grad-clip", type=positive_float, help="clip the global gradient norm")
    train.add_argument("--limit-train", type=positive_int, help="use a fixed random subset of N training images")
    train.add_argument("--limit-val", type=positive_int, help="use a fixed random subset of N validation images")
    train.add_argument("--stop-after", type=positive_int, metavar="N",
                       help="stop after N completed epochs of the schedule (continue later with --resume)")
    train.add_argument("--quiet", action="store_const", const=True, help="only one summary line per epoch")
    train.set_defaults(func=run_train)

    evaluate = _parser(subparsers, "eval", help="top-1/top-5 of a checkpoint on a dataset")
    evaluate.add_argument("--checkpoint", required=True, help="a .safetensors file written by `sasa train`")
    evaluate.add_argument("--data", required=True, help="'digits' (its validation split) or an ImageFolder (its val/)")
    evaluate.add_argument("--out", help="also write the result as JSON to this file")
    evaluate.add_argument("--model", help="fail unless the checkpoint is of this model")
    evaluate.add_argument("--batch-size", type=positive_int, default=128)
    evaluate.add_argument("--workers", type=non_negative_int, default=0)
    evaluate.add_argument("--limit-val", type=positive_int)
    evaluate.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    evaluate.add_argument("--amp", action="store_true")
    evaluate.set_defaults(func=run_eval)

    predict = _parser(subparsers, "predict", help="top-k classes of image files")
    predict.add_argument("--checkpoint", required=True, help="a .safetensors file written by `sasa train`")
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.add_argument("--topk", type=positive_int, default=5)
    predict.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    predict.add_argument("--json", action="store_true", help="one JSON object per image")
    predict.set_defaults(func=run_predict)


# ---------------------------------------------------------------------------------------------
# train


def _resolve_train_config(args: argparse.Namespace, world_size: int) -> dict[str, Any]:
    """CLI options + recipe defaults → the flat config stored in config.json."""
    if args.model is None or args.data is None or args.out is None:
        missing = [f"--{name}" for name in ("model", "data", "out") if getattr(args, name) is None]
        raise ValueError(f"{', '.join(missing)} required (or --resume DIR)")
    resolve_config(args.model)  # unknown model → error naming the closest ones, before any data is read
    recipe = RECIPES["digits" if args.data == "digits" else "imagenet"]
    config = {name: getattr(args, name) for name in TRAIN_OPTIONS}
    config["recipe"] = "digits" if args.data == "digits" else "imagenet"
    for key in ("epochs", "batch_size", "weight_decay", "warmup_epochs", "label_smoothing", "img_size", "opt", "workers"):
        if config[key] is None:
            config[key] = recipe[key]
    if config["lr"] is None:
        config["lr"] = recipe["lr"] if recipe["lr_per_256"] is None else recipe["lr_per_256"] * config["batch_size"] / 256
    defaults = dict(seed=0, device="auto", amp=False, sync_bn=False, ema=False, ema_decay=0.9998, quiet=False)
    for key, value in defaults.items():
        if config[key] is None:
            config[key] = value
    if config["warmup_epochs"] >= config["epochs"]:
        if args.warmup_epochs is not None:
            raise ValueError(f"--warmup-epochs {config['warmup_epochs']} must be smaller than --epochs {config['epochs']}")
        config["warmup_epochs"] = 0.0  # recipe warm-up longer than a short run: skip it
    if config["batch_size"] % world_size:
        raise ValueError(f"--batch-size {config['batch_size']} is not divisible by the {world_size} processes")
    model_config = resolve_config(config["model"])
    if (model_config.stem == "attention" or model_config.spatial == "attention") and config["img_size"] < MIN_IMG_SIZE_ATTENTION:
        raise ValueError(f"--img-size {config['img_size']} is too small for {config['model']}: attention models need >= {MIN_IMG_SIZE_ATTENTION}")
    config["out"] = str(args.out)
    config["model_config"] = dataclasses.asdict(model_config)
    return config


def _resume_config(args: argparse.Namespace) -> dict[str, Any]:
    run = RunDir.open_existing(args.resume)
    config = run.read_config()
    if args.out is not None and Path(args.out).resolve() != Path(args.resume).resolve():
        raise ValueError(f"--out {args.out} differs from --resume {args.resume}; a resumed run stays in its directory")
    for name in TRAIN_OPTIONS:
        value = getattr(args, name)
        if value is None or name in RESUME_OVERRIDES:
            continue
        if value != config.get(name):
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} cannot change on --resume (the run used {config.get(name)!r}, got {value!r})")
    for name in RESUME_OVERRIDES:
        if getattr(args, name) is not None:
            config[name] = getattr(args, name)
    if args.stop_after is None:
        config["stop_after"] = None
    config["out"] = str(args.resume)
    return config


def _model_metadata(config: dict[str, Any], data) -> dict[str, Any]:
    return {
        "format": "sasa.classifier/1", "model": config["model"], "num_classes": len(data.class_names),
        "in_chans": data.in_chans, "img_size": config["img_size"], "class_names": data.class_names,
        "preprocess": data.preprocess, "data": data.name, "model_config": config["model_config"],
    }


def run_train(args: argparse.Namespace) -> int:
    if args.resume is not None and args.force:
        raise ValueError("--resume and --force exclude each other (--force starts the run again)")
    ctx = init_distributed(args.device or "auto")
    try:
        return _train(args, ctx)
    finally:
        cleanup_distributed()


def _train(args: argparse.Namespace, ctx) -> int:
    resuming = args.resume is not None
    config = _resume_config(args) if resuming else _resolve_train_config(args, ctx.world_size)
    if not resuming:
        RunDir.create(config["out"], force=args.force, create=False)  # every rank checks before anyone writes
    if not ctx.is_main:
        warnings.filterwarnings("ignore")  # rank 0 reports (counts of skipped images are all-reduced)
    progress = ProgressReporter(enabled=ctx.is_main, quiet=config["quiet"])
    data = load_classification_data(config["data"], img_size=config["img_size"])
    train_set = subset(data.train, config["limit_train"], seed=0)
    val_set = subset(data.val, config["limit_val"], seed=0)
    if config["sync_bn"] and ctx.is_distributed and ctx.device.type != "cuda":
        raise ValueError("--sync-bn needs CUDA (torch's SyncBatchNorm has no CPU implementation); drop it on CPU")
    if config["sync_bn"] and not ctx.is_distributed:
        progress.warn("--sync-bn has no effect in a single process")

    barrier(ctx)
    if resuming:
        run = RunDir.open_existing(config["out"])
        if ctx.is_main:
            run.lock()
    else:
        # checked on every rank above; from here on only rank 0 touches the folder
        run = RunDir.create(config["out"], force=args.force) if ctx.is_main else RunDir(config["out"])
        if ctx.is_main:
            run.write_config({**config, "world_size": ctx.world_size, "num_classes": len(data.class_names),
                              "class_names": data.class_names, "train_images": len(train_set), "val_images": len(val_set),
                              "torch": torch.__version__})
    barrier(ctx)

    seed_everything(config["seed"])  # identical initial weights on every rank
    model = create_model(config["model"], num_classes=len(data.class_names), in_chans=data.in_chans)
    model = wrap_model(model, ctx, sync_bn=bool(config["sync_bn"]))
    per_process = config["batch_size"] // ctx.world_size
    loader_options = dict(ctx=ctx, workers=config["workers"], collate_fn=collate_skipping)
    train_loader = make_loader(train_set, batch_size=per_process, train=True, seed=config["seed"], **loader_options)
    val_loader = make_loader(val_set, batch_size=max(per_process, 64), train=False, **loader_options)
    train_config = TrainConfig(
        epochs=config["epochs"], lr=config["lr"], weight_decay=config["weight_decay"], opt=config["opt"],
        warmup_epochs=config["warmup_epochs"], amp=bool(config["amp"]), grad_clip=config["grad_clip"],
        ema=bool(config["ema"]), ema_decay=config["ema_decay"], seed=config["seed"], stop_after=config["stop_after"],
    )
    seed_everything(config["seed"] + ctx.rank)  # each rank its own augmentation stream
    trainer = Trainer(
        model=model, task=ClassificationTask(label_smoothing=config["label_smoothing"]), train_loader=train_loader,
        val_loader=val_loader, config=train_config, run=run, ctx=ctx, progress=progress,
        metadata=_model_metadata(config, data),
    )
    if resuming:
        done = trainer.resume()
        progress.info(f"resuming {run.path} after epoch {done}/{config['epochs']}")
    else:
        progress.info(
            f"training {config['model']} on {data.name}: {len(train_set)} train / {len(val_set)} val images, "
            f"{len(data.class_names)} classes, {ctx.world_size} process(es) on {ctx.device}, "
            f"batch {config['batch_size']}, lr {config['lr']:.4g}, {config['epochs']} epochs -> {run.path}"
        )
    start = time.perf_counter()
    rows = trainer.fit()
    if rows and trainer.best_value is not None:
        last = rows[-1]
        progress.summary(
            f"done: {config['model']} epoch {last['epoch']}/{config['epochs']}  val_top1 {last.get('val_top1', float('nan')):.2f}%  "
            f"best {trainer.best_value:.2f}% (epoch {trainer.best_epoch})  {time.perf_counter() - start:.0f}s  run: {run.path}"
        )
    return 0


# ---------------------------------------------------------------------------------------------
# eval / predict


def load_classifier(checkpoint: str, device: torch.device, *, expect_model: str | None = None):
    """``(model in eval mode on device, metadata)`` from a safetensors file written by ``sasa train``."""
    state_dict, meta = load_weights(checkpoint)
    required = ("model", "num_classes", "in_chans", "class_names", "preprocess")
    if any(key not in meta for key in required):
        raise ValueError(f"{checkpoint!r} is not a sasa classifier checkpoint (metadata lacks {[k for k in required if k not in meta]})")
    if expect_model is not None and expect_model != meta["model"]:
        raise ValueError(f"checkpoint {checkpoint!r} holds a {meta['model']!r} model, not {expect_model!r}")
    name = meta["model"]
    defaults = dataclasses.asdict(resolve_config(name))
    overrides = {}
    for key, value in (meta.get("model_config") or {}).items():
        value = tuple(value) if isinstance(value, list) else value
        if key in defaults and value != defaults[key]:
            overrides[key] = value
    model = create_model(name, num_classes=int(meta["num_classes"]), in_chans=int(meta["in_chans"]), **overrides)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        first = str(error).splitlines()[1].strip() if len(str(error).splitlines()) > 1 else str(error)
        raise ValueError(f"weights in {checkpoint!r} do not fit model {name!r} with {meta['num_classes']} classes: {first}") from None
    return model.to(device).eval(), meta


def run_eval(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    model, meta = load_classifier(args.checkpoint, device, expect_model=args.model)
    data = load_classification_data(args.data, img_size=int(meta["img_size"]), train=False)
    if data.class_names != list(meta["class_names"]):
        raise ValueError(
            f"checkpoint classes ({len(meta['class_names'])}: {_short(meta['class_names'])}) differ from "
            f"the data's ({len(data.class_names)}: {_short(data.class_names)})"
        )
    if data.preprocess.get("kind") != meta["preprocess"].get("kind"):
        raise ValueError(f"checkpoint was trained on {meta['preprocess'].get('kind')} data, not on {data.preprocess.get('kind')} data")
    val_set = subset(data.val, args.limit_val, seed=0)
    from sasa.engine import DistributedContext
    from sasa.engine.trainer import autocast_factory

    ctx = DistributedContext(device=device)
    loader = make_loader(val_set, batch_size=args.batch_size, train=False, ctx=ctx, workers=args.workers,
                         collate_fn=collate_skipping)
    task = ClassificationTask()
    start = time.perf_counter()
    metrics = task.evaluate(model, loader, ctx, autocast_factory(device, args.amp))
    seconds = time.perf_counter() - start
    result = {"checkpoint": str(args.checkpoint), "model": meta["model"], "data": data.name,
              "images": len(val_set) - int(metrics.get("val_skipped_images", 0)),
              "top1": metrics["val_top1"], "top5": metrics["val_top5"], "loss": metrics["val_loss"],
              "skipped_images": int(metrics.get("val_skipped_images", 0)), "epoch": meta.get("epoch"),
              "seconds": seconds}
    print(f"{meta['model']} on {data.name} ({result['images']} images): top-1 {result['top1']:.2f}%  "
          f"top-5 {result['top5']:.2f}%  loss {result['loss']:.4f}")
    if result["skipped_images"]:
        print(f"warning: {result['skipped_images']} unreadable images skipped", file=sys.stderr)
    if args.out:
        atomic_write_json(args.out, result)
    return 0


def _short(names: list[str], limit: int = 6) -> str:
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def run_predict(args: argparse.Namespace) -> int:
    from PIL import UnidentifiedImageError

    from sasa.images import open_rgb

    device = resolve_device(args.device)
    model, meta = load_classifier(args.checkpoint, device)
    names = list(meta["class_names"])
    if args.topk > len(names):
        raise ValueError(f"--topk {args.topk} exceeds the checkpoint's {len(names)} classes")
    transform = build_eval_transform(meta["preprocess"])
    images = []
    for path in args.images:  # every file is read before anything is printed
        if not Path(path).is_file():
            raise FileNotFoundError(f"image {path!r} does not exist")
        try:
            images.append(transform(open_rgb(path)))
        except (OSError, UnidentifiedImageError) as error:
            raise ValueError(f"cannot read image {path!r}: {error}") from None
    with torch.no_grad():
        probs = torch.cat([model(batch.to(device)).float().softmax(1).cpu()
                           for batch in torch.stack(images).split(64)])
    values, indices = probs.topk(args.topk, dim=1)
    for path, p, idx in zip(args.images, values.tolist(), indices.tolist()):
        if args.json:
            print(json.dumps({"image": path, "topk": [{"class": names[i], "prob": v} for v, i in zip(p, idx)]}))
        else:
            print(f"{path}: " + ", ".join(f"{names[i]} {100 * v:.1f}%" for v, i in zip(p, idx)))
    return 0
