"""Name -> config registries (models, detectors): lookup with close-name suggestions and checked overrides."""
from __future__ import annotations

import dataclasses
import difflib
from typing import Mapping, TypeVar

from sasa.errors import UserError

Config = TypeVar("Config")


def unknown_name_error(kind: str, name: str, known: list[str]) -> UserError:
    """:class:`~sasa.errors.UserError` (a ValueError) naming ``name`` and suggesting the closest of ``known``."""
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return UserError(f"unknown {kind} {name!r}{hint} Known {kind}s: {', '.join(known)}")


def resolve(kind: str, registry: Mapping[str, Config], name: str, overrides: dict) -> Config:
    """The registered config of ``name`` with ``overrides`` applied; None values are dropped, unknown keys refused.

    A field that holds an options dataclass (e.g. ``attention``) may be given whole, or its fields may be
    given flat (``kernel_size=5`` sets ``attention.kernel_size``); flat fields apply on top of a whole one.
    """
    if name not in registry:
        raise unknown_name_error(kind, name, sorted(registry))
    base = registry[name]
    overrides = {key: value for key, value in overrides.items() if value is not None}
    valid = [f.name for f in dataclasses.fields(base)]
    config = dataclasses.replace(base, **{key: value for key, value in overrides.items() if key in valid})
    flat = {key: value for key, value in overrides.items() if key not in valid}
    nested = {
        f.name: [g.name for g in dataclasses.fields(getattr(config, f.name))]
        for f in dataclasses.fields(config) if dataclasses.is_dataclass(getattr(config, f.name))
    }
    unknown = sorted(set(flat) - {key for inner in nested.values() for key in inner})
    if unknown:
        valid_all = valid + [key for inner in nested.values() for key in inner]
        raise TypeError(f"unknown option(s) {unknown} for {kind} {name!r}; valid options: {valid_all}")
    for field, inner in nested.items():
        routed = {key: value for key, value in flat.items() if key in inner}
        if routed:
            config = dataclasses.replace(config, **{field: dataclasses.replace(getattr(config, field), **routed)})
    return config
