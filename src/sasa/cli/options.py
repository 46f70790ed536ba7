"""argparse value types that reject bad input with a message naming the value, and flags generated
from an options dataclass (:mod:`sasa.engine.options`)."""
from __future__ import annotations

import argparse
import ast
import dataclasses
import math
import sys
import typing
from typing import Any, Callable, Mapping

from sasa.engine.options import Check, base_type, flag_name


def _number(text: str, cast: Callable[[str], float], accept: Callable[[float], bool], expected: str):
    try:
        value = cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not (math.isfinite(value) and accept(value)):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, lambda v: v > 0, "a positive integer")


def non_negative_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 0, "a non-negative integer")


def non_negative_float(text: str) -> float:
    return _number(text, float, lambda v: v >= 0, "a finite non-negative number")


def positive_float(text: str) -> float:
    return _number(text, float, lambda v: v > 0, "a finite positive number")


def fraction(text: str) -> float:
    return _number(text, float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def _checked(check: Check, cast: type):
    """An argparse type: ``cast`` the text, then apply the field's :class:`Check`."""
    expected = check.expected.replace("finite ", "").replace("number", "integer") if cast is int else check.expected
    return lambda text: _number(text, cast, check.accept, expected)


_BOOLEANS = {"true": True, "false": False}


def parse_value(text: str) -> Any:
    """A Python literal (5, 0.5, False, (1, 2), 'x') if ``text`` is one, true/false in any case as a bool,
    else the text itself (none, conv)."""
    if text.strip().lower() in _BOOLEANS:
        return _BOOLEANS[text.strip().lower()]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


class KeyValueAction(argparse.Action):
    """``--flag KEY=VALUE`` (repeatable) into one dict; values parsed by :func:`parse_value`."""

    def __call__(self, parser, namespace, values, option_string=None):
        key, sep, text = values.partition("=")
        if not sep or not key.strip():
            parser.error(f"{option_string} takes KEY=VALUE, got {values!r}")
        collected = dict(getattr(namespace, self.dest) or {})
        collected[key.strip()] = parse_value(text)
        setattr(namespace, self.dest, collected)


def add_option_flags(parser: argparse.ArgumentParser, options_type: type, recipes: Mapping[str, Any] = ()) -> None:
    """One flag per :func:`~sasa.engine.options.option` field of ``options_type`` (default None: not given),
    its help text followed by each recipe's value."""
    hints = typing.get_type_hints(options_type)
    own = options_type.__dict__.get("__annotations__", {})
    fields = sorted(dataclasses.fields(options_type), key=lambda f: f.name not in own)  # the task's own first
    for field in fields:
        meta = field.metadata
        if not meta.get("flag", False) or not meta.get("help"):
            continue
        values = {name: getattr(recipe, field.name) for name, recipe in dict(recipes).items()} or {"": field.default}
        if len(set(map(repr, values.values()))) == 1:
            value = next(iter(values.values()))
            shown = "" if value is None or value is False else f" (default: {value})"
        else:
            shown = " (" + ", ".join(f"{name}: {value}" for name, value in values.items()) + ")"
        help_text = meta["help"] + shown
        kind = base_type(hints[field.name])
        if kind is dict:  # repeatable KEY=VALUE, collected into one dict
            parser.add_argument(flag_name(field.name), action=KeyValueAction, metavar="KEY=VALUE", help=help_text)
            continue
        if kind is bool:
            # --name / --no-name: a recipe's True can be turned off (e.g. the shapes recipe's --head-residual)
            parser.add_argument(flag_name(field.name), action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
            continue
        check = meta.get("check")
        parser.add_argument(
            flag_name(field.name), type=_checked(check, kind) if check else kind, choices=meta.get("choices"),
            metavar=meta.get("metavar"), nargs=meta.get("nargs"), help=help_text,
        )


def given_options(args: argparse.Namespace, options_type: type) -> dict[str, Any]:
    """The option values given on the command line (flags left out are None and not returned)."""
    return {field.name: getattr(args, field.name) for field in dataclasses.fields(options_type)
            if getattr(args, field.name, None) is not None}


def one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """argparse errors as one line (no usage dump), exit code 2, like the other user errors."""
    def error(message: str):
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)

    parser.error = error
    return parser
