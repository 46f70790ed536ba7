"""Backend ``"chunked"``: exact, memory-lean local attention in pure PyTorch.

The fallback for CPUs (or devices) where the fused kernel is unavailable. It computes
the reference formulation (unfold windows, masked softmax, weighted sum), but one band
of query rows at a time: band ``[i0, i1)`` only needs key/value rows
``[i0 - r, i1 + r)``, so each band sees a slab of ``(i1 - i0) + 2r`` rows and the
``(B, N, h, W, k, k, D)`` window tensors exist for one band only. Each band is a small
autograd function that saves only its inputs (views of q, k, v) and recomputes the band
in its backward, freeing everything before the next band: peak memory is
O(B·N·H·W·(D + Dv) + band_elements) instead of the reference's O(B·N·H·W·k²·(2D + Dv)).
(``torch.utils.checkpoint`` was not used: its non-reentrant recomputation keeps the
recomputed tensors that no backward node unpacks alive until the whole backward ends, so
every band's recomputation would add to the peak.) Double backward is not supported.

The band height is chosen so that one band's window tensor holds at most
``SASA_CHUNK_ELEMENTS`` elements (``sasa.env``; default 2**23, i.e. 32 MiB in float32), and at
least one row. The arithmetic is the reference's own helpers (windows, in-image mask, ``attend``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

from sasa import env
from sasa.functional.reference import attend, inside_image_mask, upcast_half, windows


def _band_height(q: torch.Tensor, v: torch.Tensor, kernel_size: int) -> int:
    batch, heads, _, width, dim = q.shape
    per_row = batch * heads * width * kernel_size * kernel_size * max(dim, v.shape[-1])
    return max(1, env.chunk_elements() // max(per_row, 1))


def _band(q_band, k_slab, v_slab, rel, i0: int, height: int, kernel_size: int, top: int):
    """Attention of query rows [i0, i0 + h) given key/value rows [i0 - top, ...) (in-image part)."""
    r = kernel_size // 2
    h, width = q_band.shape[2], q_band.shape[3]
    # pad the slab so that row (i0 + x) + dy - r of the image sits at slab row x + dy
    pad_top = r - top
    pad_bottom = h + 2 * r - pad_top - k_slab.shape[2]
    pad = (0, 0, r, r, pad_top, pad_bottom)
    inside = inside_image_mask(height, width, kernel_size, q_band.device, first_row=i0, rows=h)
    return attend(q_band, windows(F.pad(k_slab, pad), kernel_size), windows(F.pad(v_slab, pad), kernel_size), rel, inside)
class _Band(torch.autograd.Function):
    """One band, recomputed in backward (a checkpoint that frees everything per band)."""

    @staticmethod
    def forward(ctx, q_band, k_slab, v_slab, rel, i0, height, kernel_size, top):
        ctx.save_for_backward(q_band, k_slab, v_slab, rel)
        ctx.args = (i0, height, kernel_size, top)
        with torch.no_grad():
            return _band(q_band, k_slab, v_slab, rel, i0, height, kernel_size, top)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        saved = ctx.saved_tensors
        with torch.enable_grad():
            needs = ctx.needs_input_grad[:4]
            inputs = [None if t is None else t.detach().requires_grad_(need) for t, need in zip(saved, needs)]
            out = _band(*inputs, *ctx.args)
            wanted = [t for t, need in zip(inputs, needs) if t is not None and need]
            grads = iter(torch.autograd.grad(out, wanted, grad_out)) if wanted else iter(())
        result = [next(grads) if t is not None and need else None for t, need in zip(inputs, needs)]
        return (*result, None, None, None, None)


def local_attention2d_chunked(q, k, v, *, kernel_size: int, rel_pos=None, band_height: int | None = None):
    """Exact local attention processed in bands of query rows (same contract as the reference).

    rel_pos: None or (N, k, k, D) (``local_attention2d`` brings a shared table to this form).
    """
    dtype = q.dtype
    q, k, v, rel = upcast_half(q, k, v, rel_pos)
    height = q.shape[2]
    r = kernel_size // 2
    h = band_height or _band_height(q, v, kernel_size)
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, rel))
    outputs = []
    for i0 in range(0, height, h):
        i1 = min(height, i0 + h)
        lo, hi = max(0, i0 - r), min(height, i1 + r)
        args = (q[:, :, i0:i1], k[:, :, lo:hi], v[:, :, lo:hi], rel, i0, height, kernel_size, i0 - lo)
        if grad and torch.compiler.is_compiling():
            # dynamo cannot trace _Band's backward (torch.autograd.grad); a non-reentrant checkpoint
            # gives the compiled graph the same per-band recomputation
            outputs.append(checkpoint(_band, *args, use_reentrant=False))
        elif grad:
            outputs.append(_Band.apply(*args))
        else:
            outputs.append(_band(*args))
    return (torch.cat(outputs, dim=2) if len(outputs) > 1 else outputs[0]).to(dtype)


def why_not(q, k, v, kernel_size, rel_pos) -> str | None:
    return None  # runs everywhere the reference runs
