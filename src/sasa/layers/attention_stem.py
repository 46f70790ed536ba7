"""The attention stem with spatially-aware values (paper §3.2, SPEC §3)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from sasa.layers.relative_position import RelativePositionEmbedding2d


class AttentionStem(nn.Module):
    """Block self-attention + BN + ReLU + max pool: (B, C_in, H, W) -> (B, C_out, ceil(H/4), ceil(W/4)).

    Each pixel attends to all pixels of its ``block_size``×``block_size`` block (logit q·k + q·r,
    r the relative row/column embedding of the offset). The value of pixel (a, b) is
    Σ_m p(a, b, m) W_V^m x_ab with p(a, b, ·) = softmax_m((row(a) + col(b))ᵀ ν^m), where (a, b)
    is its position inside the block. Images whose size is not a multiple of the block are
    padded, and the padded pixels are masked out of every softmax.

    Because the input has only C_in (3) channels, the stem never builds C_out-wide queries or keys:
    q·k = x_iᵀ (W_Qᵀ W_K) x_j and q·r = x_i · (W_Qᵀ r) are exact re-associations with C_in×C_in and
    C_in×(2s−1) matrices, the mixture Σ_m p(a, b, m) W_V^m is folded into one matrix per in-block
    position, and everything runs in a blocked layout (B, blocks, s², C) built from the input.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 64,
        *,
        block_size: int = 4,
        num_heads: int = 1,
        num_value_mixtures: int = 4,
        pool_size: int = 4,
    ) -> None:
        super().__init__()
        if out_channels % num_heads or out_channels % 2:
            raise ValueError(f"out_channels ({out_channels}) must be even and divisible by num_heads ({num_heads})")
        if num_value_mixtures < 1:
            raise ValueError(f"num_value_mixtures must be >= 1, got {num_value_mixtures}")
        self.block_size, self.num_heads, self.num_value_mixtures = block_size, num_heads, num_value_mixtures
        self.in_channels, self.out_channels = in_channels, out_channels
        self.head_dim = out_channels // num_heads
        projection_std = in_channels**-0.5
        self.query = nn.Parameter(torch.randn(out_channels, in_channels) * projection_std)
        self.key = nn.Parameter(torch.randn(out_channels, in_channels) * projection_std)
        self.values = nn.Parameter(torch.randn(num_value_mixtures, out_channels, in_channels) * projection_std)
        self.value_row = nn.Parameter(torch.randn(block_size, out_channels))
        self.value_col = nn.Parameter(torch.randn(block_size, out_channels))
        self.value_mix = nn.Parameter(torch.randn(num_value_mixtures, out_channels) * out_channels**-0.5)
        self.rel_pos = RelativePositionEmbedding2d(out_channels, 2 * block_size - 1)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(pool_size, pool_size, ceil_mode=True)
        pos = torch.arange(block_size)
        offset = pos[None, :] - pos[:, None] + block_size - 1  # [query pos, key pos] along one axis
        s2 = block_size * block_size
        self.register_buffer("_row_offset", offset[:, None, :, None].expand(-1, block_size, -1, block_size).reshape(s2, s2), persistent=False)
        self.register_buffer("_col_offset", offset[None, :, None, :].expand(block_size, -1, block_size, -1).reshape(s2, s2), persistent=False)

    def mixture_weights(self) -> torch.Tensor:
        """(block, block, m): p(a, b, m), the softmax over the m value matrices per in-block position."""
        emb = self.value_row[:, None, :] + self.value_col[None, :, :]
        return torch.einsum("abc,mc->abm", emb, self.value_mix).softmax(dim=-1)

    def _relative_logits(self, pixels: torch.Tensor, query_weight: torch.Tensor) -> torch.Tensor:
        """(B, L, s², C_in) -> (B, N, L, s², s²): q·cat(row[Δa], col[Δc]) = x·(W_Q,rowᵀ row[Δa]) + x·(W_Q,colᵀ col[Δc])."""
        half = self.out_channels // 2
        row = F.pad(self.rel_pos.row, (0, half))  # the row embedding lives in channels [0, C/2)
        col = F.pad(self.rel_pos.col, (half, 0))  # the column embedding in [C/2, C)
        query_pos = torch.arange(pixels.shape[-2], device=pixels.device)[:, None]
        logits = []
        for table, offset in ((row, self._row_offset), (col, self._col_offset)):
            per_head = rearrange(table, "o (n d) -> n d o", n=self.num_heads)
            folded = torch.matmul(query_weight.transpose(1, 2), per_head)  # (N, C_in, 2s-1)
            logits.append(torch.einsum("blpc,nco->bnlpo", pixels, folded)[..., query_pos, offset])
        return logits[0] + logits[1]

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H, W): the block attention before BN, ReLU and pooling."""
        s, n = self.block_size, self.num_heads
        height, width = x.shape[-2:]
        pad_h, pad_w = (-height) % s, (-width) % s
        x = F.pad(x, (0, pad_w, 0, pad_h))
        blocks_y, blocks_x = x.shape[-2] // s, x.shape[-1] // s
        pixels = rearrange(x, "b c (y a) (z e) -> b (y z) (a e) c", a=s, e=s)  # (B, L, s², C_in)
        query_weight = self.query.view(n, self.head_dim, -1) * self.head_dim**-0.5
        bilinear = torch.matmul(query_weight.transpose(1, 2), self.key.view(n, self.head_dim, -1))  # (N, C_in, C_in)
        folded_queries = torch.einsum("blpc,nce->bnlpe", pixels, bilinear)
        logits = torch.matmul(folded_queries, pixels.transpose(-1, -2).unsqueeze(1))
        logits = logits + self._relative_logits(pixels, query_weight)
        if pad_h or pad_w:
            valid = F.pad(x.new_ones(1, 1, height, width, dtype=torch.bool), (0, pad_w, 0, pad_h))
            valid = rearrange(valid, "1 1 (y a) (z e) -> (y z) (a e)", a=s, e=s)
            logits = logits.masked_fill(~valid[:, None, :], float("-inf"))
        value_weight = torch.einsum("pm,moc->poc", self.mixture_weights().reshape(s * s, -1), self.values)
        values = torch.einsum("blpc,poc->blpo", pixels, value_weight)
        values = rearrange(values, "b l p (n d) -> b n l p d", n=n)
        out = torch.matmul(logits.softmax(dim=-1), values)
        out = rearrange(out, "b n (y z) (a e) d -> b (n d) (y a) (z e)", y=blocks_y, z=blocks_x, a=s, e=s)
        return out[..., :height, :width]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.relu(self.bn(self.attend(x))))

    def extra_macs(self, input_shape: torch.Size) -> int:
        """Multiply-adds of the layer as the paper defines it, per pixel: the q and k projections, the m value
        projections and their mixing, and k² per channel for each of q·k, q·r and the weighted sum.

        This is the count that reproduces Table 1; the re-associated implementation performs fewer.
        """
        b, _, h, w = input_shape
        window = self.block_size**2
        projections = (2 + self.num_value_mixtures) * self.in_channels * self.out_channels
        per_pixel = projections + self.num_value_mixtures * self.out_channels + 3 * window * self.out_channels
        return b * h * w * per_pixel
