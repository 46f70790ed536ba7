"""Backend ``"flex"``: FlexAttention over the flattened image (CUDA).

:func:`torch.nn.attention.flex_attention.flex_attention` over the flattened H·W sequence. A
block mask keeps the pairs with ``|row diff| <= r`` and ``|col diff| <= r`` (the centred window
clipped to the image: exactly the op's masked softmax, docs/op.md, since pairs outside the image
do not exist in the sequence). The relative logits are query-dependent, so they are precomputed
as ``qr = einsum(q, rel_pos)`` of shape (B, N, H·W, k²) and added in ``score_mod`` at the pair's
offset; gradients flow to q and rel_pos through ``qr`` (a captured tensor). ``scale=1.0``: no
implicit 1/sqrt(D). The Triton kernels need power-of-two head dims >= 16, so q/k and v are
zero-padded in the channel dimension (zero channels add nothing to q·k) and the output is cropped.
float64 is rejected (no Triton kernel); on CPU FlexAttention has no backward (and its forward is
far slower than ``cpu_fused``), so CPU tensors are rejected too.

``qr`` is computed in float32 whatever the input dtype and FlexAttention accumulates scores in
float32, so half-precision inputs keep float32 logits. Its tests run only where CUDA exists.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from sasa.functional._checks import SUPPORTED_DTYPES

FLEX_DTYPES = tuple(d for d in SUPPORTED_DTYPES if d is not torch.float64)  # no float64 Triton kernels


def _flex_import_error() -> str | None:
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return f"torch.nn.attention.flex_attention unavailable ({type(exc).__name__}: {exc})"
    return None


# Graphs one process may compile for flex_attention. Each (grad mode, dtype, padded head dim, rel_pos or not)
# needs its own, and a size change costs one more before sizes turn symbolic: a ResNet trained and evaluated
# in two precisions needs a few dozen. Past dynamo's default limit (8) flex_attention silently runs unfused,
# materialising every (query, key) score: measured on an H200 (torch 2.11), 56×56×64 k=3 fwd+bwd took
# 288 ms and 41 GB there instead of 4.8 ms and 0.2 GB.
FLEX_RECOMPILE_LIMIT = 64


@functools.lru_cache(maxsize=1)
def _compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    # default dynamic=None: after the first recompile shapes become symbolic
    compiled = torch.compile(flex_attention)

    def run(*args, **kwargs):
        if torch.compiler.is_compiling():  # inside the user's torch.compile: traced into their graph
            return compiled(*args, **kwargs)
        with torch._dynamo.config.patch(recompile_limit=max(FLEX_RECOMPILE_LIMIT, torch._dynamo.config.recompile_limit)):
            return compiled(*args, **kwargs)

    return run


@functools.lru_cache(maxsize=32)
def _window_block_mask(height: int, width: int, kernel_size: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    r = kernel_size // 2

    def window(b, h, q_idx, kv_idx):
        q_row, q_col = q_idx // width, q_idx % width
        k_row, k_col = kv_idx // width, kv_idx % width
        return ((q_row - k_row).abs() <= r) & ((q_col - k_col).abs() <= r)

    length = height * width
    # cached across calls: built as normal tensors even when the first call runs under inference_mode, or a
    # later training step would fail with "Inference tensors cannot be saved for backward"
    with torch.inference_mode(False):
        return create_block_mask(window, B=None, H=None, Q_LEN=length, KV_LEN=length, device=device)


def _padded_dim(dim: int) -> int:
    return max(16, 1 << (dim - 1).bit_length())


def local_attention2d_flex(q, k, v, *, kernel_size: int, rel_pos=None):
    """FlexAttention backend (CUDA); same contract as the reference (docs/op.md)."""
    batch, heads, height, width, dim = q.shape
    dim_v = v.shape[-1]
    length, r, ks = height * width, kernel_size // 2, kernel_size
    qf = q.reshape(batch, heads, length, dim)
    kf = k.reshape(batch, heads, length, dim)
    vf = v.reshape(batch, heads, length, dim_v)
    score_mod = None
    if rel_pos is not None:
        # (B, N, L, k²) in float32: the logits of half-precision inputs accumulate in float32
        qr = torch.einsum("bnld,nod->bnlo", qf.float(), rel_pos.float().reshape(heads, ks * ks, dim))

        def score_mod(score, b, h, q_idx, kv_idx):
            # masked-out pairs are evaluated too: clamp so the index stays in range
            dy = (kv_idx // width - q_idx // width + r).clamp(0, ks - 1)
            dx = (kv_idx % width - q_idx % width + r).clamp(0, ks - 1)
            return score + qr[b, h, q_idx, dy * ks + dx]

    dp, dvp = _padded_dim(dim), _padded_dim(dim_v)
    if dp != dim:
        qf, kf = F.pad(qf, (0, dp - dim)), F.pad(kf, (0, dp - dim))
    if dvp != dim_v:
        vf = F.pad(vf, (0, dvp - dim_v))
    block_mask = _window_block_mask(height, width, kernel_size, str(q.device))
    out = _compiled_flex_attention()(qf, kf, vf, score_mod=score_mod, block_mask=block_mask, scale=1.0)
    return out[..., :dim_v].reshape(batch, heads, height, width, dim_v)


def why_not(q, k, v, kernel_size, rel_pos) -> str | None:
    if q.device.type != "cuda":
        return (
            f"needs CUDA tensors, got {q.device} (FlexAttention has no backward on CPU, "
            "and its CPU forward is far slower than cpu_fused)"
        )
    if q.dtype not in FLEX_DTYPES:
        return f"FlexAttention kernels support {', '.join(map(str, FLEX_DTYPES))}, got {q.dtype}"
    error = _flex_import_error()
    if error is not None:
        return error
    try:
        import triton  # noqa: F401
    except ImportError:
        return "FlexAttention on CUDA needs triton (not installed)"
    return None
