"""Name -> config registries (models, detectors): lookup with close-name suggestions and checked overrides."""
from __future__ import annotations

import dataclasses
import difflib
from typing import Mapping, TypeVar

Config = TypeVar("Config")


def unknown_name_error(kind: str, name: str, known: list[str]) -> ValueError:
    """``ValueError`` naming ``name`` and suggesting the closest of ``known``."""
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ValueError(f"unknown {kind} {name!r}{hint} Known {kind}s: {', '.join(known)}")


def resolve(kind: str, registry: Mapping[str, Config], name: str, overrides: dict) -> Config:
    """The registered config of ``name`` with ``overrides`` applied; None values are dropped, unknown keys refused."""
    if name not in registry:
        raise unknown_name_error(kind, name, sorted(registry))
    base = registry[name]
    overrides = {key: value for key, value in overrides.items() if value is not None}
    valid = [f.name for f in dataclasses.fields(base)]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} for {kind} {name!r}; valid options: {valid}")
    return dataclasses.replace(base, **overrides)
