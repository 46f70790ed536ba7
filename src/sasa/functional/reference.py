"""The oracle: local attention written the obvious way (contract: docs/op.md).

Gathers every k×k neighbourhood with ``Tensor.unfold`` (memory O(H·W·k²·D)),
masks neighbours outside the image, and applies a plain softmax. Slow, but each
line maps to one term of the contract, so every fast backend is tested against it.
The ``chunked`` backend runs the same helpers on bands of rows.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sasa.functional._checks import per_head_rel_pos

HALF_DTYPES = (torch.float16, torch.bfloat16)


def windows(padded: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """(B, N, H + 2r, W + 2r, D) -> (B, N, H, W, k, k, D): the k×k window of every pixel of an r-padded map."""
    unfolded = padded.unfold(2, kernel_size, 1).unfold(3, kernel_size, 1)  # (B, N, H, W, D, k, k)
    return unfolded.permute(0, 1, 2, 3, 5, 6, 4)


def neighbourhoods(x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """(B, N, H, W, D) -> (B, N, H, W, k, k, D): the zero-padded window around each pixel."""
    r = kernel_size // 2
    return windows(F.pad(x, (0, 0, r, r, r, r)), kernel_size)  # pads W then H; D untouched


def inside_image_mask(
    height: int, width: int, kernel_size: int, device: torch.device, *, first_row: int = 0, rows: int | None = None
) -> torch.Tensor:
    """(rows, W, k, k) bool: True where the window of query row first_row + i lies inside the image."""
    r = kernel_size // 2
    rows = height - first_row if rows is None else rows
    offsets = torch.arange(-r, r + 1, device=device)
    row_pos = torch.arange(first_row, first_row + rows, device=device)[:, None] + offsets
    col_pos = torch.arange(width, device=device)[:, None] + offsets
    rows_ok = (row_pos >= 0) & (row_pos < height)
    cols_ok = (col_pos >= 0) & (col_pos < width)
    return rows_ok[:, None, :, None] & cols_ok[None, :, None, :]


def attend(q, key_windows, value_windows, rel_pos, inside) -> torch.Tensor:
    """The contract's sum for given windows: softmax over the in-image window of q·(k + r), times v.

    q: (B, N, h, W, D); windows: (B, N, h, W, k, k, D|Dv); rel_pos: None or (N, k, k, D); inside: (h, W, k, k).
    """
    logits = torch.einsum("bnhwd,bnhwxyd->bnhwxy", q, key_windows)
    if rel_pos is not None:
        logits = logits + torch.einsum("bnhwd,nxyd->bnhwxy", q, rel_pos)
    logits = logits.masked_fill(~inside, float("-inf"))
    weights = logits.flatten(-2).softmax(dim=-1).view_as(logits)
    return torch.einsum("bnhwxy,bnhwxyd->bnhwd", weights, value_windows)


def upcast_half(*tensors):
    """float16/bfloat16 tensors as float32 (logits and softmax accumulate in float32); others unchanged."""
    return tuple(t.float() if t is not None and t.dtype in HALF_DTYPES else t for t in tensors)


def local_attention2d_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    kernel_size: int,
    rel_pos: torch.Tensor | None = None,
) -> torch.Tensor:
    """q, k: (B, N, H, W, D); v: (B, N, H, W, Dv); rel_pos: (k, k, D) or (N, k, k, D) -> (B, N, H, W, Dv)."""
    dtype = q.dtype
    q, k, v, rel_pos = upcast_half(q, k, v, per_head_rel_pos(rel_pos, q.shape[1]))
    inside = inside_image_mask(q.shape[2], q.shape[3], kernel_size, q.device)
    out = attend(q, neighbourhoods(k, kernel_size), neighbourhoods(v, kernel_size), rel_pos, inside)
    return out.to(dtype)


def why_not(q, k, v, kernel_size, rel_pos) -> str | None:
    return None  # the oracle runs whatever passed the argument checks
