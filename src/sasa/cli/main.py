"""``sasa`` command line: one sub-command per module, each with ``add_parser(subparsers)``."""
from __future__ import annotations

import argparse
import importlib
import sys

from sasa.errors import UserError

COMMAND_MODULES = ("sasa.cli.profile_cmd", "sasa.cli.detect_cmd", "sasa.cli.train_cmd")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sasa", description="Stand-alone local self-attention vision models.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, ValueError, TypeError, FileNotFoundError, FileExistsError) as error:
        # user errors: one clear line, no traceback
        print(f"sasa {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
