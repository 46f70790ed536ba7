"""Detection commands: ``detect-train``, ``detect-eval``, ``detect`` (data commands: :mod:`detect_data_cmd`).

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

from sasa.cli.options import add_option_flags, fraction, given_options, positive_int
from sasa.detection.options import RECIPES, DetectionOptions
from sasa.errors import UserError


def add_parser(subparsers) -> None:
    train = subparsers.add_parser(
        "detect-train", help="train a RetinaNet (default: on generated shapes)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Train a RetinaNet. Options left out take the value of the --data recipe.\n"
            "coco (paper appendix A.3): 150 epochs, global batch 64, lr 0.12 warmed up linearly over 1 epoch then\n"
            "  cosine, multiscale jitter, crop to a maximum dimension of 640, horizontal flip p=0.5. Assumptions (the\n"
            "  paper does not state them): jitter scales 0.8-1.2, SGD Nesterov momentum 0.9, weight decay 1e-4.\n"
            "shapes: generated data, 96x96, retinanet_resnet26 with a 64-channel FPN, AdamW 1e-3, 12 epochs.\n"
            "Backbone transfer: `sasa detect-data shape-crops --out D`, `sasa train --model M --data D ...`, then\n"
            "  --backbone-weights RUN/best.safetensors with a detector whose backbone is M (README)."
        ),
    )
    train.add_argument("--out", help="run directory (required unless --resume)")
    train.add_argument("--resume", metavar="RUN", help="continue the run in RUN after its last completed epoch")
    train.add_argument("--force", action="store_true", help="overwrite the run files in an existing --out")
    add_option_flags(train, DetectionOptions, RECIPES)
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


def run_detect_train(args: argparse.Namespace) -> int:
    from sasa.detection.options import resolve_options
    from sasa.detection.train import resume, train

    if args.resume and args.out and Path(args.out) != Path(args.resume):
        raise UserError("give either --out (a new run) or --resume RUN, not both")
    given = given_options(args, DetectionOptions)
    if args.resume:
        result = resume(args.resume, **given)
    else:
        options = resolve_options(given)
        if not args.out:
            raise UserError("--out RUN is required (or --resume RUN to continue a run)")
        result = train(options, out=args.out, force=args.force)
    if result is not None and result.rows:
        last = result.rows[-1]
        print(json.dumps({key: last[key] for key in last if key.startswith("val_") or key == "epoch"}))
    return 0


def run_detect_eval(args: argparse.Namespace) -> int:
    from sasa.detection.evaluate import evaluate_checkpoint
    from sasa.engine import atomic_write_json, check_output_file

    if args.out:
        check_output_file(args.out)  # before the evaluation
    result = evaluate_checkpoint(args.checkpoint, images=args.images, ann=args.ann, batch_size=args.batch_size,
                                 device=args.device, report=lambda text: print(text, file=sys.stderr))
    if args.out:
        atomic_write_json(args.out, result)
    print(json.dumps(result))
    return 0


def run_detect(args: argparse.Namespace) -> int:
    from sasa.detection.predict import detect_images

    records = detect_images(args.checkpoint, args.images, out=args.out, score_thresh=args.score_thresh,
                            device=args.device)
    for record in records:
        print(f"{record['image']} -> {record['output']}: {len(record['detections'])} detections")
    return 0
