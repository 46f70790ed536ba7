"""Backend ``"cpu_fused"``: the fused C++/OpenMP CPU kernel (forward and backward).

The extension (``csrc/local_attention_cpu.cpp``) is JIT-compiled with
:func:`torch.utils.cpp_extension.load` on first use and cached in
``$TORCH_EXTENSIONS_DIR/sasa_local_attention_cpu_<tag>`` (default
``~/.cache/sasa/torch_extensions``; ``SASA_EXTENSIONS_DIR`` overrides it for sasa only).
Concurrent processes (pytest workers, torchrun ranks) serialise on an OS-level
``flock`` in that directory, released by the kernel if the holder dies, on top of the
lock that ``cpp_extension`` itself takes; the second process finds the library built
and only loads it. No ``-march=native``: the kernel carries a baseline and an AVX2+FMA
copy chosen at run time, so a shared cache works on any x86-64 machine.

If the build fails (no compiler, no ninja, ...) the error is caught once, cached, logged
as a warning, and ``why_not`` reports ``"compiler/extension unavailable: <reason>"`` so
``auto`` falls back (to ``"chunked"``). ``SASA_DISABLE_CPU_EXT=1`` simulates that.

Memory: the forward saves q, k, v, rel_pos, the output and one float per pixel (the
logsumexp); the backward recomputes the probabilities. float16/bfloat16 are computed in
float32 (the casts are outside the autograd function, so gradients come back in the
input dtype). Double backward is not supported (``once_differentiable``).

Speed (benchmarks/bench_op.py, 2-core AMD EPYC, 1 thread, CPU time, B=8, 8 heads, k=7):
at 56x56x64 forward 11 ms and forward+backward 40 ms, i.e. 1.25x / 1.45x the 3x3 conv
(9 / 28 ms) and ~30-45x faster than the reference; 0.5-0.9x the conv at the later stages.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

import torch
from torch.autograd.function import once_differentiable

logger = logging.getLogger("sasa.functional")

_SOURCE = Path(__file__).with_name("csrc") / "local_attention_cpu.cpp"
_CFLAGS = ["-O3", "-fopenmp", "-ffp-contract=fast", "-fno-math-errno", "-Wno-psabi"]
_LDFLAGS = ["-fopenmp"]

_EXT: Any = None
_EXT_ERROR: str | None = None
_EXT_LOCK = threading.Lock()

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _build_directory() -> Path:
    base = os.environ.get("SASA_EXTENSIONS_DIR") or os.environ.get("TORCH_EXTENSIONS_DIR")
    root = Path(base) if base else Path.home() / ".cache" / "sasa" / "torch_extensions"
    torch_tag = torch.__version__.replace("+", "_").replace(".", "_")
    tag = f"py{sys.version_info.major}{sys.version_info.minor}_torch{torch_tag}"
    return root / f"sasa_local_attention_cpu_{tag}"


@contextlib.contextmanager
def _process_lock(directory: Path):
    """Exclusive flock on ``directory/.sasa_build.lock`` (no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(directory / ".sasa_build.lock", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _build() -> Any:
    if os.environ.get("SASA_DISABLE_CPU_EXT", "") not in ("", "0"):
        raise RuntimeError("disabled by SASA_DISABLE_CPU_EXT")
    # importing cpp_extension warns that no CUDA runtime exists: irrelevant to this CPU-only build
    cpp_logger = logging.getLogger("torch.utils.cpp_extension")
    previous_level = cpp_logger.level
    cpp_logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        cpp_logger.setLevel(previous_level)

    directory = _build_directory()
    directory.mkdir(parents=True, exist_ok=True)
    verbose = os.environ.get("SASA_VERBOSE_BUILD", "") not in ("", "0")
    with _process_lock(directory):
        return cpp_extension.load(
            name="sasa_local_attention_cpu",
            sources=[str(_SOURCE)],
            extra_cflags=_CFLAGS,
            extra_ldflags=_LDFLAGS,
            build_directory=str(directory),
            with_cuda=False,
            verbose=verbose,
        )


def load_extension() -> Any:
    """The compiled extension, building it on first call; ``None`` if it cannot be built."""
    global _EXT, _EXT_ERROR
    if _EXT is not None or _EXT_ERROR is not None:
        return _EXT
    with _EXT_LOCK:
        if _EXT is None and _EXT_ERROR is None:
            try:
                _EXT = _build()
            except Exception as exc:  # noqa: BLE001 - any build failure means "fall back"
                lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
                errors = [line for line in lines if "error" in line.lower()]
                message = " | ".join((lines[:1] + errors[-3:]) if errors else lines[:1] + lines[-2:])
                if len(message) > 600:
                    message = message[:600] + "..."
                _EXT_ERROR = f"{type(exc).__name__}: {message}"
                logger.warning(
                    "sasa: the fused CPU kernel could not be built (%s); local_attention2d falls back "
                    "to a slower pure-PyTorch backend on CPU", _EXT_ERROR,
                )
    return _EXT


def extension_error() -> str | None:
    """Why the extension is unavailable (building it if needed), or ``None`` if it loaded."""
    load_extension()
    return _EXT_ERROR


def why_not(q, k, v, kernel_size, rel_pos) -> str | None:
    if q.device.type != "cpu":
        return f"needs CPU tensors, got {q.device}"
    if q.dtype not in SUPPORTED_DTYPES:
        return f"unsupported dtype {q.dtype}"
    error = extension_error()
    if error is not None:
        return f"compiler/extension unavailable: {error}"
    return None


class _FusedLocalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, rel, kernel_size: int, has_rel: bool):
        ext = load_extension()
        out, lse = ext.forward(q, k, v, rel, kernel_size)
        ctx.save_for_backward(q, k, v, rel, out, lse)
        ctx.kernel_size = kernel_size
        ctx.has_rel = has_rel
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        q, k, v, rel, out, lse = ctx.saved_tensors
        need_drel = ctx.has_rel and ctx.needs_input_grad[3]
        dq, dk, dv, drel_partial = load_extension().backward(
            grad_out, q, k, v, rel, out, lse, ctx.kernel_size, need_drel
        )
        drel = None
        if need_drel:
            drel = drel_partial.sum(dim=(0, 2))  # (N, K, K, D)
            if rel.shape[0] == 1:
                drel = drel.sum(dim=0, keepdim=True)
        return dq, dk, dv, drel, None, None


def local_attention2d_cpu_fused(q, k, v, *, kernel_size: int, rel_pos=None):
    """Fused CPU local attention; same contract as the reference (SPEC §1)."""
    dtype = q.dtype
    compute = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    q_, k_, v_ = (t.to(compute).contiguous() for t in (q, k, v))
    if rel_pos is None:
        rel = torch.zeros(1, kernel_size, kernel_size, q.shape[-1], dtype=compute)
        has_rel = False
    else:
        rel = (rel_pos if rel_pos.dim() == 4 else rel_pos.unsqueeze(0)).to(compute).contiguous()
        has_rel = True
    out = _FusedLocalAttention.apply(q_, k_, v_, rel, kernel_size, has_rel)
    return out.to(dtype)
