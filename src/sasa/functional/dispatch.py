"""Backend registry and the ``backend="auto"`` choice.

Each backend states, for given inputs, why it cannot run (or ``None`` if it can).
``auto`` takes the first runnable backend in order of ``priority`` (lower is faster).
Set ``SASA_LOG_BACKEND=1`` to log every choice, or call :func:`explain_backend`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch

from sasa import env

logger = logging.getLogger("sasa.functional")

RunFn = Callable[..., torch.Tensor]
WhyNotFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, "torch.Tensor | None"], "str | None"]


@dataclass(frozen=True)
class Backend:
    name: str
    run: RunFn  # run(q, k, v, *, kernel_size, rel_pos) -> Tensor; rel_pos is None or per head (N, k, k, D)
    why_not: WhyNotFn  # why_not(q, k, v, kernel_size, rel_pos) -> reason it cannot run, or None
    priority: int  # lower runs first under "auto"
    devices: tuple[str, ...]  # device types it can run on at all


def _machine_devices() -> set[str]:
    return {"cpu"} | ({"cuda"} if torch.cuda.is_available() else set())


_BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> None:
    _BACKENDS[backend.name] = backend


def registered_backends() -> list[str]:
    """Names of all registered backends, fastest first (valid values of ``backend=``)."""
    return [b.name for b in sorted(_BACKENDS.values(), key=lambda b: b.priority)]


def backend_status() -> dict[str, str | None]:
    """For each registered backend (fastest first): None if this machine has a device it runs on, else why not."""
    devices = _machine_devices()
    return {
        name: None if devices & set(_BACKENDS[name].devices)
        else f"needs a {' or '.join(_BACKENDS[name].devices).upper()} device; this machine has {', '.join(sorted(devices))}"
        for name in registered_backends()
    }


def available_backends() -> list[str]:
    """Names of the backends that can run on this machine's devices, fastest first (see :func:`backend_status`)."""
    return [name for name, reason in backend_status().items() if reason is None]


def check_backend_name(backend: object) -> str:
    """``backend`` if it is ``"auto"`` or a registered backend's name, else a ValueError naming it."""
    if backend != "auto" and backend not in _BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {registered_backends()}, got {backend!r}")
    return backend


def explain_backend(q, k, v, *, kernel_size: int, rel_pos=None) -> list[tuple[str, str | None]]:
    """For each backend (fastest first): (name, reason it was rejected or None if runnable)."""
    return [(name, _BACKENDS[name].why_not(q, k, v, kernel_size, rel_pos)) for name in registered_backends()]


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
            if env.log_backend():
                rejected = "; ".join(f"{n}: {r}" for n, r in decisions if r is not None) or "none"
                logger.warning(
                    "local_attention2d: using %r for %s %s on %s (rejected: %s)",
                    name, tuple(q.shape), q.dtype, q.device, rejected,
                )
            return _BACKENDS[name]
    raise RuntimeError(f"no backend can run these inputs: {decisions}")  # reference always runs
