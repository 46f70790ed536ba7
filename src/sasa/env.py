"""Every ``SASA_*`` environment variable, read in this one module (at call time, so tests may set them).

SASA_LOG_BACKEND=1       log each backend choice of ``local_attention2d`` (and why the others were rejected)
SASA_CHUNK_ELEMENTS=N    element budget of one band of the ``chunked`` backend (default 2**23)
SASA_DISABLE_CPU_EXT=1   do not build/load the fused CPU kernel (``auto`` falls back to ``chunked``)
SASA_VERBOSE_BUILD=1     show the compiler output when the fused CPU kernel is built
SASA_EXTENSIONS_DIR=DIR  where the fused CPU kernel is built and cached (else $TORCH_EXTENSIONS_DIR, else
                         ~/.cache/sasa/torch_extensions)
SASA_CACHE=DIR           where generated data sets are kept (default ~/.cache/sasa)
"""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_CHUNK_ELEMENTS = 1 << 23


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def log_backend() -> bool:
    return _flag("SASA_LOG_BACKEND")


def disable_cpu_ext() -> bool:
    return _flag("SASA_DISABLE_CPU_EXT")


def verbose_build() -> bool:
    return _flag("SASA_VERBOSE_BUILD")


def chunk_elements() -> int:
    value = os.environ.get("SASA_CHUNK_ELEMENTS", "")
    if not value:
        return DEFAULT_CHUNK_ELEMENTS
    try:
        elements = int(value)
    except ValueError:
        elements = 0
    if elements <= 0:
        raise ValueError(f"SASA_CHUNK_ELEMENTS must be a positive integer, got {value!r}")
    return elements


def extensions_root() -> Path:
    base = os.environ.get("SASA_EXTENSIONS_DIR") or os.environ.get("TORCH_EXTENSIONS_DIR")
    return Path(base) if base else Path.home() / ".cache" / "sasa" / "torch_extensions"


def cache_dir() -> Path:
    return Path(os.environ.get("SASA_CACHE") or Path.home() / ".cache" / "sasa")
