"""Layout-native entry of the op: the attention layer's (B, 3·N·D, H, W) projection in, (B, N·D, H, W) out.

Same attention as :func:`sasa.functional.local_attention2d` (docs/op.md) on
q, k, v = qkv.chunk(3, dim=1), each split into N heads of D channels ("b (n d) h w"), with the
logits computed from ``scale · q``. On CPU the fused kernel reads the projection's output in place
and writes the layer's layout, so none of the rearrange/contiguous copies around the public op are
made; elsewhere (or with an explicit backend other than ``cpu_fused``) it rearranges and calls
``local_attention2d``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from sasa.functional import cpu_fused
from sasa.functional._amp import autocast_dtype, cast_to
from sasa.functional._checks import (
    check_integer, check_local_attention_args, check_padding, empty_output, per_head_rel_pos,
)
from sasa.functional.dispatch import check_backend_name

_SPLIT = "b (n d) h w -> b n h w d"


def _heads_views(qkv: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v as (B, N, H, W, D) views of qkv (no copy)."""
    return tuple(rearrange(t, _SPLIT, n=num_heads) for t in qkv.chunk(3, dim=1))


def _check_packed_args(qkv: object, num_heads: object, scale: object) -> None:
    if not isinstance(qkv, torch.Tensor):
        raise TypeError(f"qkv must be a torch.Tensor, got {type(qkv).__name__}")
    if check_integer("num_heads", num_heads) <= 0:
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
    if qkv.dim() != 4:
        raise ValueError(f"qkv must have 4 dimensions (B, 3·N·D, H, W), got {qkv.dim()} with shape {tuple(qkv.shape)}")
    if qkv.shape[1] == 0 or qkv.shape[1] % (3 * num_heads):
        raise ValueError(
            f"qkv must have 3·num_heads·D channels (num_heads={num_heads}), got {qkv.shape[1]} (shape {tuple(qkv.shape)})"
        )
    if not isinstance(scale, (int, float)) or isinstance(scale, bool):
        raise TypeError(f"scale must be a number, got {type(scale).__name__} ({scale!r})")


def local_attention2d_packed(
    qkv: torch.Tensor,
    *,
    num_heads: int,
    kernel_size: int,
    rel_pos: torch.Tensor | None = None,
    scale: float = 1.0,
    backend: str = "auto",
    padding: str = "mask",
) -> torch.Tensor:
    """Local attention on a packed projection: qkv (B, 3·N·D, H, W) -> (B, N·D, H, W).

    Channels of qkv: [q | k | v], each head-major ("(n d)"); rel_pos: None, (k, k, D) or (N, k, k, D).
    Equals ``rearrange(local_attention2d(scale·q, k, v, ..., padding=padding), "b n h w d -> b (n d) h w")``.
    """
    amp = autocast_dtype(qkv.device) if isinstance(qkv, torch.Tensor) else None
    if amp is not None:  # as local_attention2d: the autocast dtype, autocast off inside (_amp)
        qkv, rel_pos = cast_to(amp, qkv, rel_pos)
        with torch.autocast(qkv.device.type, enabled=False):
            return local_attention2d_packed(
                qkv, num_heads=num_heads, kernel_size=kernel_size, rel_pos=rel_pos, scale=scale, backend=backend,
                padding=padding,
            )
    _check_packed_args(qkv, num_heads, scale)
    num_heads, kernel_size = int(num_heads), int(kernel_size)
    q, k, v = _heads_views(qkv, num_heads)
    check_local_attention_args(q, k, v, kernel_size, rel_pos)
    if check_padding(padding) == "zeros":  # as in local_attention2d: pad by r, attend with masking, crop
        r = kernel_size // 2
        out = local_attention2d_packed(F.pad(qkv, (r, r, r, r)), num_heads=num_heads, kernel_size=kernel_size,
                                       rel_pos=rel_pos, scale=scale, backend=backend)
        return out[..., r:out.shape[-2] - r, r:out.shape[-1] - r]
    rel_pos = per_head_rel_pos(rel_pos, num_heads)
    if qkv.numel() == 0:  # empty batch or image
        check_backend_name(backend)
        return empty_output(qkv[:, : qkv.shape[1] // 3], qkv, rel_pos)
    if backend in ("auto", "cpu_fused"):
        reason = cpu_fused.why_not(q, k, v, kernel_size, rel_pos)
        if reason is None:
            return cpu_fused.local_attention2d_packed_cpu_fused(
                qkv, num_heads=num_heads, kernel_size=kernel_size, rel_pos=rel_pos, scale=scale
            )
        if backend == "cpu_fused":
            raise RuntimeError(f"backend 'cpu_fused' cannot run these inputs: {reason}")
    from sasa.functional import local_attention2d  # the package imports this module

    q = q * scale if scale != 1.0 else q
    out = local_attention2d(q.contiguous(), k.contiguous(), v.contiguous(), kernel_size=kernel_size,
                            rel_pos=rel_pos, backend=backend)
    return rearrange(out, "b n h w d -> b (n d) h w")
