"""Typed options: dataclass fields that carry their help text, value check and resume rule.

A task's options are one ``kw_only`` dataclass derived from :class:`~sasa.engine.trainer.TrainConfig`;
its recipes are instances of it. A field declared with :func:`option` becomes a command-line flag
(``sasa.cli.options.add_option_flags``), is checked when the dataclass is built (``Options.__post_init__``,
whoever builds it), and says whether a resumed run may change it. Adding an option is therefore two
edits: the field, and the code that reads it.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Mapping, TypeVar

from sasa.errors import UserError

T = TypeVar("T", bound="Options")


@dataclass(frozen=True)
class Check:
    """A value rule: ``accept(value)`` must hold; ``expected`` says what a good value is."""

    expected: str
    accept: Callable[[Any], bool]


POSITIVE = Check("a finite positive number", lambda v: math.isfinite(v) and v > 0)
NON_NEGATIVE = Check("a finite non-negative number", lambda v: math.isfinite(v) and v >= 0)
FRACTION = Check("a number in [0, 1)", lambda v: 0 <= v < 1)

# resume rules: may a resumed run change the option, and is the new value kept for later resumes?
FIXED = "fixed"  # the run's saved value; a different one is refused
CHANGE = "change"  # may change; the new value is saved (e.g. --epochs to extend a finished run)
SESSION = "session"  # this invocation only, never saved (e.g. --stop-after)


def option(default: Any = None, help: str = "", *, check: Check | None = None, choices: tuple | None = None,
           resume: str = FIXED, flag: bool = True, metavar: Any = None, nargs: int | None = None) -> Any:
    """A dataclass field with the metadata the flag generator, the checks and resume read.
    ``nargs``: a list-valued option given as that many values (its ``check`` applies to each)."""
    metadata = {"help": help, "check": check, "choices": choices, "resume": resume, "flag": flag, "metavar": metavar,
                "nargs": nargs}
    return dataclasses.field(default=default, metadata=metadata)


def base_type(hint: Any) -> type:
    """``int | None`` → int; ``str`` → str; ``list[float] | None`` → float (the type of each value)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = [arg for arg in typing.get_args(hint) if arg is not type(None)][0]
    if typing.get_origin(hint) in (list, tuple):
        return typing.get_args(hint)[0]
    return hint


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(kw_only=True)
class Options:
    """Base of every options dataclass: field checks in ``__post_init__``, recipe resolution, resume."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None:
                continue
            nargs = field.metadata.get("nargs")
            if nargs is not None:
                if not isinstance(value, (list, tuple)) or len(value) != nargs:
                    raise UserError(f"{field.name} must be {nargs} values, got {value!r}")
                value = [self._checked(field, hints, item) for item in value]
            else:
                value = self._checked(field, hints, value)
            setattr(self, field.name, value)

    @staticmethod
    def _checked(field: dataclasses.Field, hints: dict, value: Any) -> Any:
        expected = base_type(hints[field.name])
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
            raise UserError(f"{field.name} must be {expected.__name__}, got {value!r}")
        check, choices = field.metadata.get("check"), field.metadata.get("choices")
        if choices is not None and value not in choices:
            raise UserError(f"{field.name} must be one of {', '.join(map(str, choices))}; got {value!r}")
        if check is not None and not check.accept(value):
            raise UserError(f"{field.name} must be {check.expected}, got {value!r}")
        return value

    def check_ready(self) -> None:
        """Raise :class:`UserError` if something a training needs is missing (recipes may leave it out)."""

    @classmethod
    def from_recipe(cls: type[T], recipe: T, given: Mapping[str, Any]) -> T:
        """``recipe`` with the ``given`` values (None dropped); recipe defaults that conflict with a given
        value are adapted by :meth:`fit_recipe` (e.g. a warm-up longer than the given epochs)."""
        given = {key: value for key, value in given.items() if value is not None}
        return dataclasses.replace(recipe, **{**recipe.fit_recipe(given), **given})

    def fit_recipe(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Recipe values to replace because of ``given`` ones; see :class:`~sasa.engine.trainer.TrainConfig`."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_saved(cls: type[T], saved: Mapping[str, Any], given: Mapping[str, Any]) -> T:
        """The options of a run to resume: its ``saved`` ones, with the ``given`` values that may change
        (:data:`CHANGE`, :data:`SESSION`); any other given value must equal the saved one."""
        fields = {field.name: field for field in dataclasses.fields(cls)}
        values = {key: value for key, value in saved.items() if key in fields}
        for name, field in fields.items():
            if field.metadata.get("resume") == SESSION:
                values[name] = field.default
        for name, value in given.items():
            if value is None:
                continue
            if name not in fields:
                raise UserError(f"unknown option {name!r}")
            if fields[name].metadata.get("resume", FIXED) == FIXED and value != values.get(name):
                raise UserError(
                    f"{flag_name(name)} cannot change on --resume (the run used {values.get(name)!r}, got {value!r})"
                )
            values[name] = value
        return cls(**values)
