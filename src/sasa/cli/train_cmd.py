"""``sasa train``, ``sasa eval`` and ``sasa predict``: image classification from the command line.

Single process::      sasa train --model resnet26 --data digits --out runs/r26
Several processes::   torchrun --nproc_per_node=2 -m sasa train --model resnet26 --data digits --out runs/r26
Continue a run::      sasa train --resume runs/r26

The training flags are generated from :class:`sasa.classification.ClassificationOptions`; the defaults
come from the data's recipe (:data:`sasa.classification.RECIPES`).
"""
from __future__ import annotations

import argparse
import json
import sys

from sasa.classification import RECIPES, ClassificationOptions
from sasa.cli.options import add_option_flags, given_options, non_negative_int, positive_int

DESCRIPTION = """\
Train a classifier on DATA and write a run directory: config.json, metrics.csv/.jsonl, curves.png,
last.safetensors, best.safetensors, state.pt.

DATA: 'digits' (embedded 8x8 digits, 1437 train / 360 val, no download) or a folder
DATA/train/CLASS/IMAGE + DATA/val/CLASS/IMAGE. Unreadable image files are counted with a warning
(train_skipped_images / val_skipped_images): replaced by one of their class in training, skipped in
evaluation.

Options left out take the value of the data's recipe (digits for 'digits', imagenet for a folder).
The imagenet recipe is the paper's appendix (130 epochs, Nesterov SGD, lr 0.1 per 256 images, 10-epoch
warm-up + cosine, EMA 0.9999); its momentum 0.9, label smoothing 0.1, weight decay 1e-4 and augmentation
(random-resized crop + flip) are our assumptions: the paper does not state them (docs/recipes.md).
Several processes: torchrun --nproc_per_node=N -m sasa train ... (gloo on CPU, nccl on CUDA)."""


def add_parser(subparsers) -> None:
    train = subparsers.add_parser(
        "train", help="train a classifier (also under torchrun)", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--out", help="run directory to create (refused if it exists, see --force/--resume)")
    train.add_argument("--resume", metavar="DIR", help="continue the run in DIR after its last completed epoch")
    train.add_argument("--force", action="store_true", help="overwrite the run files of an existing --out")
    add_option_flags(train, ClassificationOptions, RECIPES)
    train.set_defaults(func=run_train)

    evaluate = subparsers.add_parser("eval", help="top-1/top-5 of a checkpoint on a dataset")
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

    predict = subparsers.add_parser("predict", help="top-k classes of image files")
    predict.add_argument("--checkpoint", required=True, help="a .safetensors file written by `sasa train`")
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.add_argument("--topk", type=positive_int, help="classes shown per image (default: 5, at most the checkpoint's)")
    predict.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    predict.add_argument("--json", action="store_true", help="one JSON object per image")
    predict.set_defaults(func=run_predict)


def run_train(args: argparse.Namespace) -> int:
    from sasa.classification import resolve_options, resume, train
    from sasa.errors import UserError

    given = given_options(args, ClassificationOptions)
    if args.resume is not None:
        if args.out is not None and args.out != args.resume:
            raise UserError(f"--out {args.out} differs from --resume {args.resume}; a resumed run stays in its directory")
        if args.force:
            raise UserError("--resume and --force exclude each other (--force starts the run again)")
        result = resume(args.resume, **given)
    else:
        options = resolve_options(given)
        if args.out is None:
            options.check_ready()
            raise UserError("--out required (or --resume DIR)")
        result = train(options, out=args.out, force=args.force)
    if result is not None and result.rows and result.best_value is not None:
        last, out = result.rows[-1], args.resume or args.out
        print(f"done: epoch {last['epoch']}  val_top1 {last.get('val_top1', float('nan')):.2f}%  "
              f"best {result.best_value:.2f}% (epoch {result.best_epoch})  {result.seconds:.0f}s  run: {out}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from sasa.classification import evaluate_checkpoint
    from sasa.engine import atomic_write_json, check_output_file

    if args.out:
        check_output_file(args.out)  # before minutes of evaluation
    result = evaluate_checkpoint(args.checkpoint, args.data, model=args.model, batch_size=args.batch_size,
                                 workers=args.workers, limit_val=args.limit_val, device=args.device, amp=args.amp)
    top5 = f"top-5 {result['top5']:.2f}%  " if "top5" in result else ""  # only with more than 5 classes
    print(f"{result['model']} on {result['data']} ({result['images']} images): top-1 {result['top1']:.2f}%  "
          f"{top5}loss {result['loss']:.4f}")
    if result["skipped_images"]:
        print(f"warning: {result['skipped_images']} unreadable images skipped", file=sys.stderr)
    if args.out:
        atomic_write_json(args.out, result)
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from sasa.classification import predict_images

    for record in predict_images(args.checkpoint, args.images, topk=args.topk, device=args.device):
        if args.json:
            print(json.dumps(record))
        else:
            print(f"{record['image']}: " + ", ".join(f"{t['class']} {100 * t['prob']:.1f}%" for t in record["topk"]))
    return 0
