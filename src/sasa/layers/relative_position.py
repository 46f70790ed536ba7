"""Relative position embeddings for local attention (paper §2.2)."""
from __future__ import annotations

import torch
from einops import rearrange
from torch import nn


class RelativePositionEmbedding2d(nn.Module):
    """Row-offset and column-offset embeddings, each ``channels // 2`` wide, concatenated.

    ``forward(num_heads)`` returns (N, k, k, channels // N): the embedding of offset (Δa, Δc)
    is ``cat(row[Δa], col[Δc])``, and head n takes its slice of those channels (SPEC: with N ≥ 2 a head
    sees row offsets only or column offsets only). ``per_head=True`` (not the paper's reading) gives
    every head both: head n's embedding is ``cat(row_n[Δa], col_n[Δc])``, its D/2-channel slices of the
    row and column tables, so one head can prefer a 2-D offset. Same parameters either way.
    """

    def __init__(self, channels: int, kernel_size: int, *, init_std: float = 1.0, per_head: bool = False) -> None:
        super().__init__()
        if channels % 2:
            raise ValueError(f"channels must be even to split into row and column halves, got {channels}")
        self.kernel_size, self.init_std, self.per_head = kernel_size, init_std, per_head
        self.row = nn.Parameter(torch.empty(kernel_size, channels // 2))
        self.col = nn.Parameter(torch.empty(kernel_size, channels // 2))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.row, std=self.init_std)
        nn.init.normal_(self.col, std=self.init_std)

    def forward(self, num_heads: int) -> torch.Tensor:
        k = self.kernel_size
        if self.per_head:
            row = rearrange(self.row, "x (n d) -> n x d", n=num_heads)[:, :, None, :].expand(-1, k, k, -1)
            col = rearrange(self.col, "y (n d) -> n y d", n=num_heads)[:, None, :, :].expand(-1, k, k, -1)
            return torch.cat([row, col], dim=-1).contiguous()
        table = torch.cat([self.row[:, None, :].expand(k, k, -1), self.col[None, :, :].expand(k, k, -1)], dim=-1)
        return rearrange(table, "x y (n d) -> n x y d", n=num_heads).contiguous()
