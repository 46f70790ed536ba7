"""The paper's "absolute" positional encoding: 2-D sinusoids of the pixel position (docs/layer.md)."""
from __future__ import annotations

import math

import torch


def sinusoidal_position_2d(channels: int, height: int, width: int, *, device=None, dtype=None) -> torch.Tensor:
    """(channels, H, W): channels [0, C/2) encode the row, [C/2, C) the column, each as Transformer sinusoids.

    Along one axis, with F = C/4 frequencies ω_f = 10000^(-f/F), position p maps to
    (sin(p·ω_0), ..., sin(p·ω_{F-1}), cos(p·ω_0), ..., cos(p·ω_{F-1})). Computed for any H, W, so a layer
    using it works at every input size. ``channels`` must be a multiple of 4.
    """
    if channels % 4:
        raise ValueError(f"channels must be a multiple of 4 (row/column halves of sin/cos pairs), got {channels}")
    quarter = channels // 4
    frequencies = torch.exp(torch.arange(quarter, device=device, dtype=torch.float64) * (-math.log(10000.0) / quarter))

    def axis(length: int) -> torch.Tensor:  # (length, C/2)
        angles = torch.arange(length, device=device, dtype=torch.float64)[:, None] * frequencies
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    rows = axis(height).T[:, :, None].expand(-1, height, width)
    cols = axis(width).T[:, None, :].expand(-1, height, width)
    return torch.cat([rows, cols], dim=0).to(dtype or torch.get_default_dtype())
