"""Backend ``"cpu_fused"``: the fused C++/OpenMP CPU kernel (forward and backward).

The extension (``csrc/local_attention_cpu.cpp``, plus ``csrc/attention_stem_cpu.cpp``: the attention stem's
block attention, used by ``sasa.layers.attention_stem``) is JIT-compiled with
:func:`torch.utils.cpp_extension.load` on first use and cached in
``$TORCH_EXTENSIONS_DIR/sasa_local_attention_cpu_<tag>`` (tag: Python, torch and a hash of the sources, which
are built from copies in that directory, so checkouts with the same sources share one build; default
``~/.cache/sasa/torch_extensions``; ``SASA_EXTENSIONS_DIR`` overrides it for sasa only).
Concurrent processes (pytest workers, torchrun ranks) serialise on an OS-level
``flock`` in that directory, released by the kernel if the holder dies, on top of the
lock that ``cpp_extension`` itself takes; the second process finds the library built
and only loads it. No ``-march=native``: the kernel carries a baseline, an AVX2+FMA and an
AVX-512 (16 float lanes) copy chosen at run time, so a shared cache works on any x86-64 machine.

If the build fails (no compiler, no ninja, ...) the error is caught once, cached, logged
as a warning, and ``why_not`` reports ``"compiler/extension unavailable: <reason>"`` so
``auto`` falls back (to ``"chunked"``). ``SASA_DISABLE_CPU_EXT=1`` simulates that.

Memory: the forward saves q, k, v, rel_pos, the output and one float per pixel (the
logsumexp); the backward recomputes the probabilities. Without autograd the forward-only
kernel computes and keeps no logsumexp. ``local_attention2d_packed_cpu_fused`` is the
layout-native entry (the layer's (B, 3·N·D, H, W) projection in, (B, N·D, H, W) out). float16/bfloat16 are computed in
float32 (the casts are outside the autograd function, so gradients come back in the
input dtype). Double backward is not supported (the backward ops have no autograd formula).
The entries are PyTorch custom ops (``torch.ops.sasa.cpu_fused_*``, fake implementations and
registered autograd), so ``torch.compile`` (fullgraph, dynamic shapes) and ``torch.export`` trace them.
Its speed against the 3×3 conv and the reference is printed by ``benchmarks/bench_op.py`` (README).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import sys
import threading
from pathlib import Path
from typing import Any

import torch

from sasa import env
from sasa.functional._checks import SUPPORTED_DTYPES

logger = logging.getLogger("sasa.functional")

_SOURCES = [Path(__file__).with_name("csrc") / name for name in ("local_attention_cpu.cpp", "attention_stem_cpu.cpp")]
_CFLAGS = ["-O3", "-fopenmp", "-ffp-contract=fast", "-fno-math-errno", "-Wno-psabi"]
_LDFLAGS = ["-fopenmp"]

_EXT: Any = None
_EXT_ERROR: str | None = None
_EXT_LOCK = threading.Lock()


def _build_directory() -> Path:
    """One directory per Python, torch and source content: checkouts with other sources never rebuild each other's."""
    root = env.extensions_root()
    torch_tag = torch.__version__.replace("+", "_").replace(".", "_")
    digest = hashlib.sha256(b"".join(source.name.encode() + source.read_bytes() for source in _SOURCES)).hexdigest()
    tag = f"py{sys.version_info.major}{sys.version_info.minor}_torch{torch_tag}_{digest[:12]}"
    return root / f"sasa_local_attention_cpu_{tag}"


def _staged_sources(directory: Path) -> list[Path]:
    """Copies of the sources inside ``directory`` (rewritten only when they differ), so that every checkout
    with these sources builds from the same paths: ninja then finds the build current instead of rebuilding
    because the source paths in its commands changed."""
    staged = []
    for source in _SOURCES:
        target = directory / "src" / source.name
        content = source.read_bytes()
        if not target.exists() or target.read_bytes() != content:
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            partial.write_bytes(content)
            partial.replace(target)
        staged.append(target)
    return staged


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
    if env.disable_cpu_ext():
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
    verbose = env.verbose_build()
    with _process_lock(directory):
        return cpp_extension.load(
            name="sasa_local_attention_cpu",
            sources=[str(source) for source in _staged_sources(directory)],
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


# torch.compile runs this at trace time and bakes the answer into the graph (the build's lock and
# globals are not traceable): the dispatcher's choice of backend is made while tracing.
@torch.compiler.assume_constant_result
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


def _drel_from_partial(drel_partial: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
    """Per-task partial sums (B, N, bands, K, K, D) -> the gradient of rel (1 or N, K, K, D)."""
    drel = drel_partial.sum(dim=(0, 2))  # (N, K, K, D)
    return drel.sum(dim=0, keepdim=True) if rel.shape[0] == 1 else drel


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


# Every kernel entry is a PyTorch custom op (``torch.library.custom_op``): one op per C++ call,
# a ``register_fake`` giving the output shapes from the input shapes, and the autograd formula
# registered on the forward op, calling the backward op. torch.compile then traces through the
# kernel without a graph break (with dynamic shapes) and torch.export records it as one node.
# A forward called with need_lse=False keeps no logsumexp and cannot be differentiated.
def _lse_like(q: torch.Tensor, need_lse: bool) -> torch.Tensor:
    return q.new_empty(q.shape[:4] if need_lse else (0,))


@torch.library.custom_op("sasa::cpu_fused_forward", mutates_args=())
def fused_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel: torch.Tensor, kernel_size: int, need_lse: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Contiguous q, k (B, N, H, W, D), v (B, N, H, W, Dv), rel (1 or N, K, K, D) -> out (B, N, H, W, Dv), lse (B, N, H, W)."""
    out, lse = load_extension().forward(q, k, v, rel, kernel_size, need_lse)
    return out, lse


@fused_forward.register_fake
def _(q, k, v, rel, kernel_size, need_lse):
    return q.new_empty((*q.shape[:4], v.shape[-1])), _lse_like(q, need_lse)


@torch.library.custom_op("sasa::cpu_fused_backward", mutates_args=())
def fused_backward(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel: torch.Tensor,
    out: torch.Tensor, lse: torch.Tensor, kernel_size: int, need_drel: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> dq, dk, dv, drel (shaped like rel; zeros unless ``need_drel``)."""
    dq, dk, dv, drel_partial = load_extension().backward(grad_out, q, k, v, rel, out, lse, kernel_size, need_drel)
    return dq, dk, dv, _drel_from_partial(drel_partial, rel) if need_drel else torch.zeros_like(rel)


@fused_backward.register_fake
def _(grad_out, q, k, v, rel, out, lse, kernel_size, need_drel):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(rel)


def _save_forward(ctx, inputs, output) -> None:
    q, k, v, rel, kernel_size, need_lse = inputs
    ctx.save_for_backward(q, k, v, rel, *output)
    ctx.kernel_size, ctx.need_lse = kernel_size, need_lse


def _backward(ctx, grad_out, _grad_lse):
    if not ctx.need_lse:
        raise RuntimeError("sasa::cpu_fused_forward was called with need_lse=False and cannot be differentiated")
    need_drel = ctx.needs_input_grad[3]  # False for the zero table that stands in for rel_pos=None
    dq, dk, dv, drel = fused_backward(grad_out, *ctx.saved_tensors, ctx.kernel_size, need_drel)
    return dq, dk, dv, drel if need_drel else None, None, None


fused_forward.register_autograd(_backward, setup_context=_save_forward)


@torch.library.custom_op("sasa::cpu_fused_forward_packed", mutates_args=())
def fused_forward_packed(
    qkv: torch.Tensor, rel: torch.Tensor, kernel_size: int, num_heads: int, scale: float, need_lse: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Contiguous qkv (B, 3·N·D, H, W), rel (1 or N, K, K, D) -> out (B, N·D, H, W), lse (B, N, H, W)."""
    out, lse = load_extension().forward_packed(qkv, rel, kernel_size, num_heads, scale, need_lse)
    return out, lse


@fused_forward_packed.register_fake
def _(qkv, rel, kernel_size, num_heads, scale, need_lse):
    batch, channels, height, width = qkv.shape
    lse_shape = (batch, num_heads, height, width) if need_lse else (0,)
    return qkv.new_empty((batch, channels // 3, height, width)), qkv.new_empty(lse_shape)


@torch.library.custom_op("sasa::cpu_fused_backward_packed", mutates_args=())
def fused_backward_packed(
    grad_out: torch.Tensor, qkv: torch.Tensor, rel: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    kernel_size: int, num_heads: int, scale: float, need_drel: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> dqkv (B, 3·N·D, H, W), drel (shaped like rel; zeros unless ``need_drel``)."""
    dqkv, drel_partial = load_extension().backward_packed(
        grad_out, qkv, rel, out, lse, kernel_size, num_heads, scale, need_drel
    )
    return dqkv, _drel_from_partial(drel_partial, rel) if need_drel else torch.zeros_like(rel)


@fused_backward_packed.register_fake
def _(grad_out, qkv, rel, out, lse, kernel_size, num_heads, scale, need_drel):
    return torch.empty_like(qkv), torch.empty_like(rel)


def _save_forward_packed(ctx, inputs, output) -> None:
    qkv, rel, kernel_size, num_heads, scale, need_lse = inputs
    ctx.save_for_backward(qkv, rel, *output)
    ctx.args, ctx.need_lse = (kernel_size, num_heads, scale), need_lse


def _backward_packed(ctx, grad_out, _grad_lse):
    if not ctx.need_lse:
        raise RuntimeError("sasa::cpu_fused_forward_packed was called with need_lse=False and cannot be differentiated")
    need_drel = ctx.needs_input_grad[1]
    dqkv, drel = fused_backward_packed(grad_out, *ctx.saved_tensors, *ctx.args, need_drel)
    return dqkv, drel if need_drel else None, None, None, None, None


fused_forward_packed.register_autograd(_backward_packed, setup_context=_save_forward_packed)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _kernel_rel(rel_pos, kernel_size: int, dim: int, compute: torch.dtype) -> torch.Tensor:
    """rel_pos (None or per head, (N, K, K, D)) as the kernel takes it: contiguous; zeros (1, K, K, D) when None
    (never requiring grad, so no gradient of it is computed)."""
    if rel_pos is None:
        return torch.zeros(1, kernel_size, kernel_size, dim, dtype=compute)
    return rel_pos.to(compute).contiguous()


def local_attention2d_cpu_fused(q, k, v, *, kernel_size: int, rel_pos=None):
    """Fused CPU local attention; same contract as the reference (docs/op.md).

    Without autograd (``no_grad``, or no input requiring grad) the forward-only kernel runs: no
    logsumexp is computed or kept.
    """
    dtype = q.dtype
    compute = _compute_dtype(dtype)
    q_, k_, v_ = (t.to(compute).contiguous() for t in (q, k, v))
    rel = _kernel_rel(rel_pos, kernel_size, q.shape[-1], compute)
    out, _ = fused_forward(q_, k_, v_, rel, kernel_size, _needs_grad(q, k, v, rel))
    return out.to(dtype)


def local_attention2d_packed_cpu_fused(qkv, *, num_heads: int, kernel_size: int, rel_pos=None, scale: float = 1.0):
    """Layout-native fused CPU local attention: qkv (B, 3·N·D, H, W) -> (B, N·D, H, W).

    The kernel reads q, k, v straight from the 1×1 projection's output and writes the layer's
    output layout: no rearrange/contiguous copies; ``scale`` multiplies q inside the kernel.
    """
    dtype = qkv.dtype
    compute = _compute_dtype(dtype)
    qkv_ = qkv.to(compute).contiguous()
    dim = qkv.shape[1] // (3 * num_heads)
    rel = _kernel_rel(rel_pos, kernel_size, dim, compute)
    out, _ = fused_forward_packed(qkv_, rel, kernel_size, num_heads, float(scale), _needs_grad(qkv, rel))
    return out.to(dtype)
