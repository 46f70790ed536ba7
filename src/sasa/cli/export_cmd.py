"""``sasa export``: write a classifier checkpoint as an ONNX model."""
from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("export", help="export a classifier checkpoint (ONNX; any batch and image size)")
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a .safetensors file written by `sasa train`")
    parser.add_argument("--format", default="onnx", choices=["onnx"], help="output format (default: onnx)")
    parser.add_argument("--out", required=True, help="output file, e.g. model.onnx")
    parser.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from sasa.classification.export import export_classifier

    out = export_classifier(args.checkpoint, args.out, format=args.format)
    print(f"{out}: input 'images' (batch, channels, height, width), output 'logits' (batch, classes)")
    return 0
