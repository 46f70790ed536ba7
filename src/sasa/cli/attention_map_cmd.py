"""``sasa attention-map``: draw each head's attention weights of one query pixel over the image."""
from __future__ import annotations

import argparse
from pathlib import Path


def _pixel(text: str) -> tuple[int, int]:
    try:
        y, x = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--pixel must be 'y,x' (two integers), got {text!r}") from None
    return y, x


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("attention-map", help="draw one pixel's attention weights, one panel per head")
    parser.add_argument("--checkpoint", required=True, help="a .safetensors file written by `sasa train`")
    parser.add_argument("image", metavar="IMAGE")
    parser.add_argument("--pixel", required=True, type=_pixel, help="query pixel 'y,x' in the model's input image")
    parser.add_argument("--layer", help="attention layer name (default: the first; a wrong name lists them)")
    parser.add_argument("--out", required=True, help="output PNG")
    parser.set_defaults(func=run_attention_map)


def run_attention_map(args: argparse.Namespace) -> int:
    import torch

    from sasa.classification.data import build_eval_transform
    from sasa.classification.checkpoint import load_checkpoint
    from sasa.errors import UserError
    from sasa.explain import attention_maps, draw_attention_maps
    from sasa.images import open_rgb

    if not Path(args.image).is_file():
        raise FileNotFoundError(f"image {args.image!r} does not exist")
    model, meta = load_checkpoint(args.checkpoint, device="cpu")
    image = build_eval_transform(meta["preprocess"])(open_rgb(args.image))
    try:
        maps = attention_maps(model, image[None], pixels=[args.pixel], layer=args.layer)
    except ValueError as error:  # a pixel outside the image or an unknown layer name: the user's input
        raise UserError(str(error)) from None
    mean, std = (torch.tensor(meta["preprocess"][key][: image.shape[0]]).view(-1, 1, 1) for key in ("mean", "std"))
    draw_attention_maps(maps, (image * std + mean).clamp(0, 1), pixel=args.pixel, out=args.out)
    print(f"{args.out}: layer {maps.layer}, query {args.pixel} -> feature pixel {maps.positions[0]} of {maps.feature_size}")
    return 0
