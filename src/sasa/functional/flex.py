"""CUDA backends: ``"flex"`` (FlexAttention) and, when installed, ``"natten"``.

``flex``
    :func:`torch.nn.attention.flex_attention.flex_attention` over the flattened H·W
    sequence. A block mask keeps the pairs with ``|row diff| <= r`` and ``|col diff| <= r``
    (the centred window clipped to the image: exactly SPEC §1's masked softmax, since pairs
    outside the image simply do not exist in the sequence). The relative logits are
    query-dependent, so they are precomputed as ``qr = einsum(q, rel_pos)`` of shape
    (B, N, H·W, k²) and added in ``score_mod`` at the pair's offset; gradients flow to q and
    rel_pos through ``qr`` (a captured tensor). ``scale=1.0``: no implicit 1/sqrt(D).
    The Triton kernels need power-of-two head dims >= 16, so q/k and v are zero-padded in
    the channel dimension (zero channels add nothing to q·k) and the output is cropped.
    float64 is rejected (no Triton kernel); on CPU FlexAttention has no backward (and its
    forward is ~25x slower than ``cpu_fused``), so CPU tensors are rejected too.

``natten``
    Registered only if ``import natten`` works and provides ``natten.functional.na2d``.
    NATTEN's neighbourhoods are *shifted* at the borders (every query keeps k×k neighbours),
    whereas SASA's window stays centred and shrinks; and NATTEN has no query-dependent
    relative term (its ``rpb`` is a per-head bias, not q·r). It is made exact here for the
    content-only case (``rel_pos is None``) by zero-padding the image by r on every side
    (so every original pixel's NATTEN window is the centred one) and appending one channel
    to q (value 1) and k (0 inside the image, -1e4 on the padding), which drives the logits
    of padded keys to -1e4 so their softmax weight is exactly 0 in float32/bfloat16/float16.
    With ``rel_pos`` it would not be exact, so ``why_not`` rejects it.
    Neither backend can be exercised without a GPU; their tests skip on CPU-only machines.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

FLEX_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# ----------------------------------------------------------------------------- flex
def _flex_import_error() -> str | None:
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return f"torch.nn.attention.flex_attention unavailable ({type(exc).__name__}: {exc})"
    return None


@functools.lru_cache(maxsize=1)
def _compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    # default dynamic=None: after the first recompile shapes become symbolic, so a network
    # with many layer shapes does not exhaust dynamo's recompile limit (and silently fall
    # back to the eager, memory-hungry flex_attention)
    return torch.compile(flex_attention)


@functools.lru_cache(maxsize=32)
def _window_block_mask(height: int, width: int, kernel_size: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    r = kernel_size // 2

    def window(b, h, q_idx, kv_idx):
        q_row, q_col = q_idx // width, q_idx % width
        k_row, k_col = kv_idx // width, kv_idx % width
        return ((q_row - k_row).abs() <= r) & ((q_col - k_col).abs() <= r)

    length = height * width
    return create_block_mask(window, B=None, H=None, Q_LEN=length, KV_LEN=length, device=device)


def _padded_dim(dim: int) -> int:
    return max(16, 1 << (dim - 1).bit_length())


def local_attention2d_flex(q, k, v, *, kernel_size: int, rel_pos=None):
    """FlexAttention backend (CUDA); same contract as the reference (SPEC §1)."""
    batch, heads, height, width, dim = q.shape
    dim_v = v.shape[-1]
    length, r, ks = height * width, kernel_size // 2, kernel_size
    qf = q.reshape(batch, heads, length, dim)
    kf = k.reshape(batch, heads, length, dim)
    vf = v.reshape(batch, heads, length, dim_v)
    score_mod = None
    if rel_pos is not None:
        rel = rel_pos if rel_pos.dim() == 4 else rel_pos.unsqueeze(0).expand(heads, -1, -1, -1)
        qr = torch.einsum("bnld,nod->bnlo", qf, rel.reshape(heads, ks * ks, dim))  # (B, N, L, k²)

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


def flex_why_not(q, k, v, kernel_size, rel_pos) -> str | None:
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


# ----------------------------------------------------------------------------- natten
def natten_available() -> bool:
    try:
        from natten.functional import na2d  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


def local_attention2d_natten(q, k, v, *, kernel_size: int, rel_pos=None):
    """NATTEN backend (CUDA, content-only logits); exact by padding, see the module docstring."""
    from natten.functional import na2d

    if rel_pos is not None:
        raise ValueError("the natten backend has no q·r relative logits; use backend='flex'")
    batch, heads, height, width, dim = q.shape
    dim_v = v.shape[-1]
    r = kernel_size // 2
    dp = max(16, -(-(dim + 1) // 8) * 8)
    ones = q.new_ones(batch, heads, height, width, 1)
    q1 = F.pad(torch.cat([q, ones], dim=-1), (0, dp - dim - 1))
    k1 = F.pad(torch.cat([k, torch.zeros_like(ones)], dim=-1), (0, dp - dim - 1))
    v1 = F.pad(v, (0, dp - dim_v)) if dp >= dim_v else v
    pad = (0, 0, r, r, r, r)
    q1, k1, v1 = F.pad(q1, pad), F.pad(k1, pad), F.pad(v1, pad)
    outside = torch.ones(height + 2 * r, width + 2 * r, dtype=torch.bool, device=q.device)
    outside[r : r + height, r : r + width] = False
    k1 = k1.clone()
    k1[..., :, :, dim] = k1[..., :, :, dim].masked_fill(outside, -1e4)
    # NATTEN layout: (B, H, W, heads, D)
    to_natten = lambda t: t.permute(0, 2, 3, 1, 4).contiguous()  # noqa: E731
    out = na2d(to_natten(q1), to_natten(k1), to_natten(v1), kernel_size=kernel_size, scale=1.0)
    out = out.permute(0, 3, 1, 2, 4)[:, :, r : r + height, r : r + width, :dim_v]
    return out.contiguous()


def natten_why_not(q, k, v, kernel_size, rel_pos) -> str | None:
    if q.device.type != "cuda":
        return f"needs CUDA tensors, got {q.device}"
    if rel_pos is not None:
        return "NATTEN has no query-dependent relative logits (q·r); exact only for rel_pos=None"
    if q.dtype not in FLEX_DTYPES:
        return f"NATTEN supports {', '.join(map(str, FLEX_DTYPES))}, got {q.dtype}"
    return None
