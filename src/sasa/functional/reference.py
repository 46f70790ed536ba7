"""The oracle: local attention written the obvious way.

Gathers every k×k neighbourhood with ``Tensor.unfold`` (memory O(H·W·k²·D)),
masks neighbours outside the image, and applies a plain softmax. Slow, but each
line maps to one term of SPEC §1, so every fast backend is tested against it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def neighbourhoods(x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """(B, N, H, W, D) -> (B, N, H, W, k, k, D): the zero-padded window around each pixel."""
    r = kernel_size // 2
    padded = F.pad(x, (0, 0, r, r, r, r))  # pads W then H; D untouched
    windows = padded.unfold(2, kernel_size, 1).unfold(3, kernel_size, 1)  # (B, N, H, W, D, k, k)
    return windows.permute(0, 1, 2, 3, 5, 6, 4)


def inside_image_mask(height: int, width: int, kernel_size: int, device: torch.device) -> torch.Tensor:
    """(H, W, k, k) bool: True where the window position lies inside the image."""
    r = kernel_size // 2
    offsets = torch.arange(-r, r + 1, device=device)
    rows = torch.arange(height, device=device)[:, None] + offsets
    cols = torch.arange(width, device=device)[:, None] + offsets
    rows_ok = (rows >= 0) & (rows < height)
    cols_ok = (cols >= 0) & (cols < width)
    return rows_ok[:, None, :, None] & cols_ok[None, :, None, :]


def local_attention2d_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    kernel_size: int,
    rel_pos: torch.Tensor | None = None,
) -> torch.Tensor:
    """q, k: (B, N, H, W, D); v: (B, N, H, W, Dv); rel_pos: (k, k, D) or (N, k, k, D) -> (B, N, H, W, Dv)."""
    height, width = q.shape[2], q.shape[3]
    key_windows = neighbourhoods(k, kernel_size)  # (B, N, H, W, k, k, D)
    value_windows = neighbourhoods(v, kernel_size)  # (B, N, H, W, k, k, Dv)
    logits = torch.einsum("bnhwd,bnhwxyd->bnhwxy", q, key_windows)
    if rel_pos is not None:
        per_head = rel_pos if rel_pos.dim() == 4 else rel_pos.unsqueeze(0).expand(q.shape[1], -1, -1, -1)
        logits = logits + torch.einsum("bnhwd,nxyd->bnhwxy", q, per_head)
    inside = inside_image_mask(height, width, kernel_size, q.device)
    logits = logits.masked_fill(~inside, float("-inf"))
    weights = logits.flatten(-2).softmax(dim=-1).view_as(logits)
    return torch.einsum("bnhwxy,bnhwxyd->bnhwd", weights, value_windows)
