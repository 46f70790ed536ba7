"""Detection commands: ``detectors``, ``detect-data``, ``detect-train``, ``detect-eval``, ``detect``.

    sasa detect-data shapes --out DIR [--num-train N --num-val M --img-size 128 --seed 0]
    sasa detect-data check --images DIR --ann FILE.json
    sasa detect-train --out RUN [--model retinanet_sa_resnet26_attnhead] [--data shapes | --data coco
                      --images DIR --ann FILE --val-images DIR --val-ann FILE] [--epochs ...]
    sasa detect-train --resume RUN
    sasa detect-eval --checkpoint RUN/best.safetensors [--images DIR --ann FILE] [--out metrics.json]
    sasa detect IMAGE... --checkpoint RUN/best.safetensors --out DIR [--score-thresh 0.3]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sasa.cli.options import fraction, non_negative_float, non_negative_int, positive_float, positive_int


def add_parser(subparsers) -> None:
    detectors = subparsers.add_parser("detectors", help="list detector names")
    detectors.set_defaults(func=run_detectors)

    data = subparsers.add_parser("detect-data", help="generate the shapes set, or check a COCO annotation file")
    kinds = data.add_subparsers(dest="kind", required=True, metavar="KIND")
    shapes = kinds.add_parser("shapes", help="write the procedurally generated shapes set (COCO json + PNGs)")
    shapes.add_argument("--out", required=True, help="output folder")
    shapes.add_argument("--num-train", type=non_negative_int, default=1000)
    shapes.add_argument("--num-val", type=non_negative_int, default=200)
    shapes.add_argument("--img-size", type=positive_int, default=128)
    shapes.add_argument("--max-objects", type=positive_int, default=4)
    shapes.add_argument("--seed", type=non_negative_int, default=0)
    shapes.set_defaults(func=run_detect_data_shapes)
    crops = kinds.add_parser("shape-crops", help="a shape-crop classification set (ImageFolder) for backbone pre-training")
    crops.add_argument("--out", required=True, help="output folder (train/CLASS/*.png, val/CLASS/*.png)")
    crops.add_argument("--num-train", type=positive_int, default=1000, help="shapes images to cut crops from")
    crops.add_argument("--num-val", type=positive_int, default=200)
    crops.add_argument("--img-size", type=positive_int, default=96, help="size of the shapes images")
    crops.add_argument("--crop-size", type=positive_int, default=32)
    crops.add_argument("--seed", type=non_negative_int, default=0)
    crops.set_defaults(func=run_detect_data_crops)
    check = kinds.add_parser("check", help="validate a COCO detection file and report what loading would skip")
    check.add_argument("--images", required=True, help="image folder")
    check.add_argument("--ann", required=True, help="COCO annotation json")
    check.set_defaults(func=run_detect_data_check)

    train = subparsers.add_parser(
        "detect-train", help="train a RetinaNet (default: on generated shapes)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Train a RetinaNet. Options left out take the value of the --data recipe.\n"
            "coco (paper appendix A.3): 150 epochs, batch 64, lr 0.12 warmed up linearly over 1 epoch then cosine,\n"
            "  multiscale jitter, crop to a maximum dimension of 640, horizontal flip p=0.5. Assumptions (the paper\n"
            "  does not state them): jitter scales 0.8-1.2, SGD Nesterov momentum 0.9, weight decay 1e-4, no clipping.\n"
            "shapes: generated data, 96x96, retinanet_resnet26 with a 64-channel FPN, AdamW 1e-3, 12 epochs.\n"
            "Backbone transfer: `sasa detect-data shape-crops --out D`, `sasa train --model M --data D ...`, then\n"
            "  --backbone-weights RUN/best.safetensors with a detector whose backbone is M (README)."
        ),
    )
    train.add_argument("--out", help="run directory (required unless --resume)")
    train.add_argument("--resume", metavar="RUN", help="continue the run in RUN after its last completed epoch")
    train.add_argument("--force", action="store_true", help="overwrite the run files in an existing --out")
    train.add_argument("--data", choices=("shapes", "coco"), help="shapes (default, generated) or coco (your files)")
    train.add_argument("--images", help="training image folder (--data coco)")
    train.add_argument("--ann", help="training COCO annotation json (--data coco)")
    train.add_argument("--val-images", help="validation image folder (--data coco)")
    train.add_argument("--val-ann", help="validation COCO annotation json (--data coco)")
    train.add_argument("--shapes-train", type=positive_int, help="generated training images (shapes: 1000)")
    train.add_argument("--shapes-val", type=positive_int, help="generated validation images (shapes: 200)")
    train.add_argument("--shapes-seed", type=non_negative_int)
    train.add_argument("--model", help="detector name, see `sasa detectors` (shapes: retinanet_resnet26)")
    train.add_argument("--backbone", help="override the backbone: any `sasa models` name, e.g. sa_resnet26")
    train.add_argument("--head", choices=("conv", "attention"), help="spatial layers of the FPN and heads")
    train.add_argument("--head-residual", action="store_true", default=None,
                       help="--head attention: x + attn(x) in the FPN and subnets (not the paper's form)")
    train.add_argument("--kernel-size", type=positive_int)
    train.add_argument("--num-heads", type=positive_int)
    train.add_argument("--backend", help="local_attention2d backend (default auto)")
    train.add_argument("--img-size", type=positive_int,
                       help="shapes image size and default --min/--max-size (shapes: 96, coco: 640)")
    train.add_argument("--min-size", type=positive_int, help="resize so the short side is this")
    train.add_argument("--max-size", type=positive_int, help="... and the long side at most this")
    train.add_argument("--fpn-channels", type=positive_int, help="FPN/head width (shapes: 64, coco: 256)")
    train.add_argument("--anchor-size", type=positive_int, help="P3 anchor base size (shapes: 12, coco: 32)")
    train.add_argument("--backbone-weights", metavar="CKPT",
                       help="start the backbone from a `sasa train` checkpoint of the same model and options")
    train.add_argument("--scale-jitter", type=positive_float, nargs=2, metavar=("MIN", "MAX"),
                       help="multiscale jitter: long side max-size×U(MIN, MAX), then a random crop to max-size "
                            "(coco: 0.8 1.2, a range the paper does not state; shapes: off)")
    train.add_argument("--epochs", type=positive_int)
    train.add_argument("--batch-size", type=positive_int, help="per process")
    train.add_argument("--opt", choices=("sgd", "adamw"))
    train.add_argument("--lr", type=positive_float)
    train.add_argument("--weight-decay", type=non_negative_float)
    train.add_argument("--warmup-epochs", type=non_negative_float)
    train.add_argument("--grad-clip", type=positive_float)
    train.add_argument("--amp", action="store_true", default=None, help="bf16 autocast on CPU, fp16 on CUDA")
    train.add_argument("--seed", type=non_negative_int)
    train.add_argument("--workers", type=non_negative_int, help="data loader workers per process (default 0)")
    train.add_argument("--stop-after", type=positive_int, help="stop after this many epochs (resume later)")
    train.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    train.add_argument("--quiet", action="store_true", help="only the per-epoch summary lines")
    train.set_defaults(func=run_detect_train)

    evaluate = subparsers.add_parser("detect-eval", help="COCO box mAP of a detection checkpoint")
    evaluate.add_argument("--checkpoint", required=True, help="a .safetensors file written by detect-train")
    evaluate.add_argument("--images", help="image folder (default: the validation set the run trained with)")
    evaluate.add_argument("--ann", help="COCO annotation json (default: the run's validation set)")
    evaluate.add_argument("--out", help="write the metrics JSON here (always printed)")
    evaluate.add_argument("--batch-size", type=positive_int, default=8)
    evaluate.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    evaluate.set_defaults(func=run_detect_eval)

    detect = subparsers.add_parser("detect", help="draw a checkpoint's detections on images")
    detect.add_argument("images", nargs="+", metavar="IMAGE")
    detect.add_argument("--checkpoint", required=True)
    detect.add_argument("--out", required=True, help="output folder: one PNG per image + detections.json")
    detect.add_argument("--score-thresh", type=fraction, default=0.3, help="draw detections scoring at least this")
    detect.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    detect.set_defaults(func=run_detect)


def run_detectors(args: argparse.Namespace) -> int:
    from sasa.detection import list_detectors

    print("\n".join(list_detectors()))
    return 0


def run_detect_data_shapes(args: argparse.Namespace) -> int:
    from sasa.detection.shapes import generate_shapes

    out = generate_shapes(args.out, num_train=args.num_train, num_val=args.num_val, img_size=args.img_size,
                          seed=args.seed, max_objects=args.max_objects)
    print(f"wrote {args.num_train} train and {args.num_val} val images to {out} "
          f"(annotations/instances_train.json, annotations/instances_val.json)")
    return 0


def run_detect_data_crops(args: argparse.Namespace) -> int:
    from sasa.detection.shapes import generate_shape_crops

    out = generate_shape_crops(args.out, num_train=args.num_train, num_val=args.num_val, img_size=args.img_size,
                               crop_size=args.crop_size, seed=args.seed)
    counts = {split: sum(1 for _ in (out / split).glob("*/*.png")) for split in ("train", "val")}
    print(f"wrote {counts['train']} train and {counts['val']} val crops to {out} (train `sasa train --data {out}`)")
    return 0


def run_detect_data_check(args: argparse.Namespace) -> int:
    from sasa.detection.data import load_coco

    _, report = load_coco(args.ann, args.images, verify_images=True)
    print(report.summary())
    return 0


TRAIN_OPTION_KEYS = (
    "data", "images", "ann", "val_images", "val_ann", "shapes_train", "shapes_val", "shapes_seed", "model", "backbone",
    "head", "head_residual", "kernel_size", "num_heads", "backend", "img_size",
    "min_size", "max_size", "fpn_channels", "anchor_size",
    "epochs", "batch_size", "opt", "lr", "weight_decay", "warmup_epochs", "grad_clip", "amp", "seed", "workers",
    "stop_after", "backbone_weights", "scale_jitter",
)


def run_detect_train(args: argparse.Namespace) -> int:
    from sasa.detection.train import resolve_options, train

    if args.resume and args.out and Path(args.out) != Path(args.resume):
        raise ValueError("give either --out (a new run) or --resume RUN, not both")
    if not args.resume and not args.out:
        raise ValueError("--out RUN is required (or --resume RUN to continue a run)")
    given = {key: getattr(args, key) for key in TRAIN_OPTION_KEYS}
    if args.resume:
        fixed = [key for key, value in given.items() if value is not None and key not in ("stop_after", "workers")]
        if fixed:
            flags = ", ".join("--" + key.replace("_", "-") for key in fixed)
            raise ValueError(f"--resume continues the run with its saved options (RUN/config.json); drop {flags}")
        options = {"stop_after": args.stop_after, "workers": args.workers}
    else:
        options = resolve_options(given)
    rows = train(options, out=args.resume or args.out, resume=bool(args.resume), force=args.force,
                 device=args.device, quiet=args.quiet)
    if rows:
        last = rows[-1]
        print(json.dumps({key: last[key] for key in last if key.startswith("val_") or key == "epoch"}))
    return 0


def _data_for_checkpoint(checkpoint: str, images: str | None, ann: str | None) -> tuple[str, str]:
    """--images/--ann, or the validation set recorded in the run directory beside the checkpoint."""
    if images and ann:
        return images, ann
    if images or ann:
        raise ValueError("give both --images and --ann, or neither (to use the run's validation set)")
    config = Path(checkpoint).parent / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"no --images/--ann given and no run config at {str(config)!r} to find the validation set")
    paths = json.loads(config.read_text())["data"]
    return paths["val_images"], paths["val_ann"]


def run_detect_eval(args: argparse.Namespace) -> int:
    import torch

    from sasa.detection.data import CocoDetection, collate_detection
    from sasa.detection.evaluate import evaluate_detector
    from sasa.detection.train import load_detector
    from sasa.engine import atomic_write_json, resolve_device

    device = resolve_device(args.device)
    model, metadata = load_detector(args.checkpoint, device=device)
    images, ann = _data_for_checkpoint(args.checkpoint, args.images, args.ann)
    dataset = CocoDetection(images, ann)
    print(dataset.report.summary(), file=sys.stderr)
    if dataset.label_to_category_id != metadata["category_ids"]:
        raise ValueError(f"{ann}: category ids {dataset.label_to_category_id} differ from the checkpoint's "
                         f"{metadata['category_ids']}")
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, collate_fn=collate_detection)
    metrics = evaluate_detector(model, dataset, loader, device=device)
    result = {"checkpoint": args.checkpoint, "images": images, "ann": ann, "num_images": len(dataset), **metrics}
    if args.out:
        atomic_write_json(args.out, result)
    print(json.dumps(result))
    return 0


def run_detect(args: argparse.Namespace) -> int:
    import torch
    from PIL import UnidentifiedImageError
    from torchvision.transforms.functional import pil_to_tensor, to_pil_image

    from sasa.detection.draw import draw_detections
    from sasa.detection.train import load_detector
    from sasa.engine import atomic_write_json, resolve_device
    from sasa.images import open_rgb

    device = resolve_device(args.device)
    loaded = []
    for path in args.images:  # read every image first: a bad one fails before any work
        try:
            loaded.append((Path(path), pil_to_tensor(open_rgb(path))))  # 16-bit images scaled, not clipped
        except FileNotFoundError:
            raise FileNotFoundError(f"image {path!r} does not exist") from None
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"cannot read image {path!r}: {error}") from None
    model, metadata = load_detector(args.checkpoint, device=device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names, records = metadata["class_names"], []
    with torch.no_grad():
        for path, image in loaded:
            detection = model([image.float().div(255).to(device)])[0]
            detection = {key: value.cpu() for key, value in detection.items()}
            target = out / f"{path.stem}.png"
            to_pil_image(draw_detections(image, detection, names, score_thresh=args.score_thresh)).save(target)
            keep = detection["scores"] >= args.score_thresh
            records.append({"image": str(path), "output": str(target), "detections": [
                {"label": names[label], "score": round(score, 4), "box_xyxy": [round(v, 1) for v in box]}
                for box, score, label in zip(detection["boxes"][keep].tolist(), detection["scores"][keep].tolist(),
                                             detection["labels"][keep].tolist())
            ]})
            print(f"{path} -> {target}: {len(records[-1]['detections'])} detections")
    atomic_write_json(out / "detections.json", records)
    return 0
