"""``sasa models`` and ``sasa profile``: what exists and what it costs."""
from __future__ import annotations

import argparse
import json

from sasa.cli.options import KeyValueAction, positive_int
from sasa.errors import UserError
from sasa.models import list_models
from sasa.models.registry import resolve_config
from sasa.profile import model_cost


def add_parser(subparsers) -> None:
    models = subparsers.add_parser("models", help="list model names")
    models.set_defaults(func=run_models)
    profile = subparsers.add_parser("profile", help="parameters and FLOPs of models")
    profile.add_argument("model", nargs="*", help="model or detector names (default: every model)")
    profile.add_argument("--img-size", type=positive_int, default=224)
    profile.add_argument("--num-classes", type=positive_int, help="default: 1000 for models, 80 for detectors")
    profile.add_argument("--json", action="store_true", help="print one JSON object per model")
    profile.add_argument("--model-opt", action=KeyValueAction, metavar="KEY=VALUE", default={},
                         help="config override for every named model, repeatable (as in `sasa train`)")
    profile.set_defaults(func=run_profile)


def run_models(args: argparse.Namespace) -> int:
    print("\n".join(list_models()))
    return 0


def profile_model(name: str, *, img_size: int, num_classes: int, model_opt: dict | None = None) -> dict:
    params, flops = model_cost(name, img_size=img_size, num_classes=num_classes, **(model_opt or {}))
    record = {"model": name, "params": params, "flops": flops, "img_size": img_size, "num_classes": num_classes}
    return {**record, "model_opt": model_opt} if model_opt else record


def profile_any(name: str, *, img_size: int, num_classes: int | None, model_opt: dict | None = None) -> dict:
    """A classification model, or a detector (``sasa detectors``; one img_size×img_size image, not resized)."""
    from sasa.detection import list_detectors, profile_detector

    if name in list_detectors():
        return profile_detector(name, img_size=img_size, num_classes=num_classes or 80, **(model_opt or {}))
    return profile_model(name, img_size=img_size, num_classes=num_classes or 1000, model_opt=model_opt)


def check_model_opt(names: list[str], model_opt: dict) -> None:
    """Unknown keys or bad values of --model-opt as one-line user errors (naming the valid keys)."""
    from sasa.detection import list_detectors, resolve_detector_config

    for name in names:
        resolve = resolve_detector_config if name in list_detectors() else resolve_config
        try:
            resolve(name, **model_opt)
        except (ValueError, TypeError) as error:
            raise UserError(str(error)) from None


def run_profile(args: argparse.Namespace) -> int:
    names = args.model or list_models()
    check_model_opt(names, args.model_opt)
    rows = [profile_any(name, img_size=args.img_size, num_classes=args.num_classes, model_opt=args.model_opt) for name in names]
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    print(f"{'model':<40} {'params (M)':>11} {'GFLOPs':>8}   @ {args.img_size}x{args.img_size}")
    for row in rows:
        print(f"{row['model']:<40} {row['params'] / 1e6:>11.2f} {row['flops'] / 1e9:>8.2f}   {row['num_classes']} classes")
    return 0
