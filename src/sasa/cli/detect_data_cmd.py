"""``sasa detectors`` and ``sasa detect-data``: detector names, the generated sets, COCO file checks.

    sasa detect-data shapes --out DIR [--num-train N --num-val M --img-size 128 --seed 0]
    sasa detect-data shape-crops --out DIR [--num-train N --num-val M --crop-size 32]
    sasa detect-data check --images DIR --ann FILE.json
"""
from __future__ import annotations

import argparse

from sasa.cli.options import non_negative_int, positive_int


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
