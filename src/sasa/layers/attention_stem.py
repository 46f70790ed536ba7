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
        self.out_channels = out_channels
        self.head_dim = out_channels // num_heads
        self.query = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.key = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.values = nn.Conv2d(in_channels, num_value_mixtures * out_channels, 1, bias=False)
        self.value_row = nn.Parameter(torch.randn(block_size, out_channels))
        self.value_col = nn.Parameter(torch.randn(block_size, out_channels))
        self.value_mix = nn.Parameter(torch.randn(num_value_mixtures, out_channels) * out_channels**-0.5)
        self.rel_pos = RelativePositionEmbedding2d(out_channels, 2 * block_size - 1)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(pool_size, pool_size, ceil_mode=True)

    def mixture_weights(self) -> torch.Tensor:
        """(block, block, m): p(a, b, m), the softmax over the m value matrices per in-block position."""
        emb = self.value_row[:, None, :] + self.value_col[None, :, :]
        return torch.einsum("abc,mc->abm", emb, self.value_mix).softmax(dim=-1)

    def _relative_logit_table(self) -> torch.Tensor:
        """(N, s², s², D): the embedding for each (query, key) position pair inside a block."""
        s = self.block_size
        table = self.rel_pos(self.num_heads)  # (N, 2s-1, 2s-1, D), index offset + s - 1
        pos = torch.arange(s, device=table.device)
        offset = pos[None, :] - pos[:, None] + s - 1  # [query pos, key pos]
        rows = offset[:, None, :, None].expand(s, s, s, s).reshape(s * s, s * s)
        cols = offset[None, :, None, :].expand(s, s, s, s).reshape(s * s, s * s)
        return table[:, rows, cols]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, n = self.block_size, self.num_heads
        height, width = x.shape[-2:]
        pad_h, pad_w = (-height) % s, (-width) % s
        x = F.pad(x, (0, pad_w, 0, pad_h))
        m = self.num_value_mixtures
        mix = self.mixture_weights()  # (s, s, m)
        values = rearrange(self.values(x), "b (m c) (y a) (z e) -> b y z (a e) m c", m=m, a=s, e=s)
        values = torch.einsum("byzpmc,pm->byzpc", values, mix.reshape(s * s, m))
        blocks = "b (n d) (y a) (z e) -> b n y z (a e) d"
        q = rearrange(self.query(x), blocks, n=n, a=s, e=s) * self.head_dim**-0.5
        k = rearrange(self.key(x), blocks, n=n, a=s, e=s)
        v = rearrange(values, "b y z p (n d) -> b n y z p d", n=n)
        logits = torch.einsum("bnyzpd,bnyzqd->bnyzpq", q, k)
        logits = logits + torch.einsum("bnyzpd,npqd->bnyzpq", q, self._relative_logit_table())
        if pad_h or pad_w:
            valid = F.pad(x.new_ones(1, 1, height, width, dtype=torch.bool), (0, pad_w, 0, pad_h))
            valid = rearrange(valid, "1 1 (y a) (z e) -> y z (a e)", a=s, e=s)
            logits = logits.masked_fill(~valid[None, None, :, :, None, :], float("-inf"))
        out = torch.einsum("bnyzpq,bnyzqd->bnyzpd", logits.softmax(dim=-1), v)
        out = rearrange(out, "b n y z (a e) d -> b (n d) (y a) (z e)", a=s, e=s)[..., :height, :width]
        return self.pool(self.relu(self.bn(out)))

    def extra_macs(self, input_shape: torch.Size) -> int:
        """Multiply-adds beyond the 1×1 projections: value mixing, q·k, q·r and the weighted sum."""
        b, _, h, w = input_shape
        window = self.block_size**2
        per_pixel = self.num_value_mixtures * self.out_channels + 3 * window * self.out_channels
        return b * h * w * per_pixel
