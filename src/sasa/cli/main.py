"""``sasa`` command line: one sub-command per module, each with ``add_parser(subparsers)``."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from sasa.cli.options import one_line_errors
from sasa.errors import UserError

COMMAND_MODULES = (
    "sasa.cli.profile_cmd", "sasa.cli.detect_data_cmd", "sasa.cli.detect_cmd", "sasa.cli.train_cmd", "sasa.cli.ablate_cmd",
    "sasa.cli.attention_map_cmd", "sasa.cli.export_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sasa", description="Stand-alone local self-attention vision models.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_parser(subparsers)
    _one_line_errors(subparsers)
    return parser


def _one_line_errors(subparsers) -> None:
    """Every sub-command's argparse errors as one line (no usage dump), like the other user errors."""
    for parser in subparsers.choices.values():
        one_line_errors(parser)
        for action in parser._subparsers._group_actions if parser._subparsers else ():
            _one_line_errors(action)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as error:
        # a user error: one line, no traceback (once under torchrun: every rank raises it); bugs keep theirs
        if os.environ.get("RANK", "0") == "0":
            print(f"sasa {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
