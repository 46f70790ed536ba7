"""Analytic cost of the op, beside the op (FLOPs = 2 × multiply-adds)."""
from __future__ import annotations


def local_attention2d_macs(
    *, batch: int, heads: int, height: int, width: int, dim: int, value_dim: int, kernel_size: int, relative: bool = True,
    content: bool = True,
) -> int:
    """Multiply-adds of one call: per query pixel and head, k²·D for q·k (if ``content``), k²·D for q·r
    (if ``relative``), k²·Dv for the weighted sum.

    Border windows are counted in full, as the paper's Table 1 convention does.
    """
    window = kernel_size * kernel_size
    per_pixel = window * dim * (int(relative) + int(content)) + window * value_dim
    return batch * heads * height * width * per_pixel
