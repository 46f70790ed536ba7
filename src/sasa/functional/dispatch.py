"""Backend registry and the ``backend="auto"`` choice.

Each backend states, for given inputs, why it cannot run (or ``None`` if it can).
``auto`` takes the first runnable backend in order of ``priority`` (lower is faster).
Set ``SASA_LOG_BACKEND=1`` to log every choice, or call :func:`explain_backend`.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable

import torch

logger = logging.getLogger("sasa.functional")

RunFn = Callable[..., torch.Tensor]
WhyNotFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, "torch.Tensor | None"], "str | None"]


@dataclass(frozen=True)
class Backend:
    name: str
    run: RunFn  # run(q, k, v, *, kernel_size, rel_pos) -> Tensor
    why_not: WhyNotFn  # why_not(q, k, v, kernel_size, rel_pos) -> reason it cannot run, or None
    priority: int  # lower runs first under "auto"
    description: str = ""


_BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> None:
    _BACKENDS[backend.name] = backend


def available_backends() -> list[str]:
    """Names of all registered backends, fastest first."""
    return [b.name for b in sorted(_BACKENDS.values(), key=lambda b: b.priority)]


def check_backend_name(backend: object) -> str:
    """``backend`` if it is ``"auto"`` or a registered backend's name, else a ValueError naming it."""
    if backend != "auto" and backend not in _BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {available_backends()}, got {backend!r}")
    return backend


def explain_backend(q, k, v, *, kernel_size: int, rel_pos=None) -> list[tuple[str, str | None]]:
    """For each backend (fastest first): (name, reason it was rejected or None if runnable)."""
    return [(name, _BACKENDS[name].why_not(q, k, v, kernel_size, rel_pos)) for name in available_backends()]


def _log_enabled() -> bool:
    return os.environ.get("SASA_LOG_BACKEND", "") not in ("", "0")


def select_backend(q, k, v, *, kernel_size: int, rel_pos, backend: str) -> Backend:
    """Return the backend to run: the named one (checked), or the first runnable under ``"auto"``."""
    if check_backend_name(backend) != "auto":
        chosen = _BACKENDS[backend]
        reason = chosen.why_not(q, k, v, kernel_size, rel_pos)
        if reason is not None:
            raise RuntimeError(f"backend {backend!r} cannot run these inputs: {reason}")
        return chosen
    decisions = explain_backend(q, k, v, kernel_size=kernel_size, rel_pos=rel_pos)
    for name, reason in decisions:
        if reason is None:
            if _log_enabled():
                rejected = "; ".join(f"{n}: {r}" for n, r in decisions if r is not None) or "none"
                logger.warning(
                    "local_attention2d: using %r for %s %s on %s (rejected: %s)",
                    name, tuple(q.shape), q.dtype, q.device, rejected,
                )
            return _BACKENDS[name]
    raise RuntimeError(f"no backend can run these inputs: {decisions}")  # reference always runs
