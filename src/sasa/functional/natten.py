"""Backend ``"natten"``: NATTEN's ``na2d`` made exact for content-only logits (CUDA).

Registered only if ``import natten`` works and provides ``natten.functional.na2d``.
NATTEN's neighbourhoods are *shifted* at the borders (every query keeps k×k neighbours),
whereas SASA's window stays centred and shrinks; and NATTEN has no query-dependent
relative term (its ``rpb`` is a per-head bias, not q·r). It is made exact here for the
content-only case (``rel_pos is None``) by zero-padding the image by r on every side
(so every original pixel's NATTEN window is the centred one) and appending one channel
to q (value 1) and k (0 inside the image, the dtype's most negative finite value on the
padding), so the logits of padded keys are far below any real logit and their softmax weight is
exactly 0, however large the real logits are.
With ``rel_pos`` it would not be exact, so ``why_not`` rejects it.
It cannot be exercised without a GPU; its tests skip on CPU-only machines.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sasa.functional._checks import SUPPORTED_DTYPES

NATTEN_DTYPES = tuple(d for d in SUPPORTED_DTYPES if d is not torch.float64)  # NATTEN has no float64 kernels


def available() -> bool:
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
    # the most negative finite value of the dtype: the masked logit stays below any real one
    k1[..., :, :, dim] = k1[..., :, :, dim].masked_fill(outside, -torch.finfo(q.dtype).max)
    # NATTEN layout: (B, H, W, heads, D)
    to_natten = lambda t: t.permute(0, 2, 3, 1, 4).contiguous()  # noqa: E731
    out = na2d(to_natten(q1), to_natten(k1), to_natten(v1), kernel_size=kernel_size, scale=1.0)
    out = out.permute(0, 3, 1, 2, 4)[:, :, r : r + height, r : r + width, :dim_v]
    return out.contiguous()


def why_not(q, k, v, kernel_size, rel_pos) -> str | None:
    if q.device.type != "cuda":
        return f"needs CUDA tensors, got {q.device}"
    if rel_pos is not None:
        return "NATTEN has no query-dependent relative logits (q·r); exact only for rel_pos=None"
    if q.dtype not in NATTEN_DTYPES:
        return f"NATTEN supports {', '.join(map(str, NATTEN_DTYPES))}, got {q.dtype}"
    return None
