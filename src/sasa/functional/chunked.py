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
recomputed tensors that no backward node unpacks alive until the whole backward ends,
which added ~50 MB per band at 56x56x64.) Double backward is not supported.

The band height is chosen so that one band's window tensor holds at most
``SASA_CHUNK_ELEMENTS`` elements (default 2**23, i.e. 32 MiB in float32), and at least
one row. Speed is roughly that of the reference (it is the same arithmetic).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

DEFAULT_CHUNK_ELEMENTS = 1 << 23


def _band_height(q: torch.Tensor, v: torch.Tensor, kernel_size: int) -> int:
    budget = int(os.environ.get("SASA_CHUNK_ELEMENTS", DEFAULT_CHUNK_ELEMENTS))
    batch, heads, _, width, dim = q.shape
    per_row = batch * heads * width * kernel_size * kernel_size * max(dim, v.shape[-1])
    return max(1, budget // max(per_row, 1))


def _band(q_band, k_slab, v_slab, rel, i0: int, height: int, kernel_size: int, top: int):
    """Attention of query rows [i0, i0 + h) given key/value rows [i0 - top, ...) (in-image part)."""
    r = kernel_size // 2
    h, width = q_band.shape[2], q_band.shape[3]
    # pad the slab so that row (i0 + x) + dy - r of the image sits at slab row x + dy
    pad_top = r - top
    pad_bottom = h + 2 * r - pad_top - k_slab.shape[2]
    k_pad = F.pad(k_slab, (0, 0, r, r, pad_top, pad_bottom))
    v_pad = F.pad(v_slab, (0, 0, r, r, pad_top, pad_bottom))
    key_windows = k_pad.unfold(2, kernel_size, 1).unfold(3, kernel_size, 1).permute(0, 1, 2, 3, 5, 6, 4)
    value_windows = v_pad.unfold(2, kernel_size, 1).unfold(3, kernel_size, 1).permute(0, 1, 2, 3, 5, 6, 4)
    logits = torch.einsum("bnhwd,bnhwxyd->bnhwxy", q_band, key_windows)
    if rel is not None:
        logits = logits + torch.einsum("bnhwd,nxyd->bnhwxy", q_band, rel)
    offsets = torch.arange(-r, r + 1, device=q_band.device)
    rows = torch.arange(i0, i0 + h, device=q_band.device)[:, None] + offsets
    cols = torch.arange(width, device=q_band.device)[:, None] + offsets
    inside = ((rows >= 0) & (rows < height))[:, None, :, None] & ((cols >= 0) & (cols < width))[None, :, None, :]
    logits = logits.masked_fill(~inside, float("-inf"))
    weights = logits.flatten(-2).softmax(dim=-1).view_as(logits)
    return torch.einsum("bnhwxy,bnhwxyd->bnhwd", weights, value_windows)


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
    """Exact local attention processed in bands of query rows (same contract as the reference)."""
    height = q.shape[2]
    r = kernel_size // 2
    rel = None
    if rel_pos is not None:
        rel = rel_pos if rel_pos.dim() == 4 else rel_pos.unsqueeze(0).expand(q.shape[1], -1, -1, -1)
    h = band_height or _band_height(q, v, kernel_size)
    grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, rel_pos)
    )
    outputs = []
    for i0 in range(0, height, h):
        i1 = min(height, i0 + h)
        lo, hi = max(0, i0 - r), min(height, i1 + r)
        args = (q[:, :, i0:i1], k[:, :, lo:hi], v[:, :, lo:hi], rel, i0, height, kernel_size, i0 - lo)
        if grad:
            outputs.append(_Band.apply(*args))
        else:
            outputs.append(_band(*args))
    return torch.cat(outputs, dim=2) if len(outputs) > 1 else outputs[0]


def why_not(q, k, v, kernel_size, rel_pos) -> str | None:
    return None  # runs everywhere the reference runs
