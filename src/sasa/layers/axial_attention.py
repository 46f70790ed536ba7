"""Position-sensitive axial attention layer (Axial-DeepLab, SPEC §8)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from sasa.functional.axial import axial_attention1d, axial_attention1d_macs

AXES = ("height", "width")


def masked_batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``bn`` over (B, C, L, L) with statistics from the entries where ``valid`` (L, L) is True only.

    Pairs outside a local span take no part in the softmax, so they must not shift the
    logits' batch statistics either; with every pair valid this is exactly ``bn(x)``.
    """
    if bool(valid.all()):
        return bn(x)
    normed = bn(x[..., valid].unsqueeze(-1)).squeeze(-1)  # (B, C, V, 1): BN2d statistics over B·V
    out = x.new_zeros(x.shape)  # pairs outside the span stay 0; the op masks them out of the softmax
    out[..., valid] = normed
    return out


class AxialAttention2d(nn.Module):
    """Multi-head position-sensitive attention along one axis: (B, C_in, H, W) -> (B, C_out, H', W').

    Each pixel attends to the pixels of its column (``axis="height"``) or row (``axis="width"``)
    within its span. ``span=None`` is the global span: the whole axis, with relative embeddings
    learned for offsets up to ``max_length − 1`` (set it to the axis length at training
    resolution). On a longer axis a global layer falls back to the local span of the offsets it
    has embeddings for (2·max_length − 1 keys centred on the query) rather than inventing
    embeddings; on shorter ones it uses the central rows of its tables. ``span=m`` (odd) is the
    local span: the m keys centred on the query. ``stride`` average-pools the output along this
    axis only (ceil mode), so H' = ceil(H/stride) for the height axis and W' likewise.

    Per head, q and k have ``head_dim // 2`` channels and v ``head_dim``; r^q, r^k, r^v are shared
    by all heads. ``normalize=True`` follows the paper's port: batch norm on the q/k/v projection,
    on each of the three logit terms per head (statistics over in-span pairs only), and on the
    two output parts (Σ softmax·v, Σ softmax·r^v) before they are summed; the logits are not
    scaled. ``normalize=False``: no batch norm, logits scaled by 1/sqrt(Dq).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        axis: str = "height",
        num_heads: int = 8,
        span: int | None = None,
        max_length: int = 56,
        stride: int = 1,
        normalize: bool = True,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if axis not in AXES:
            raise ValueError(f"axis must be one of {AXES}, got {axis!r}")
        if num_heads <= 0 or out_channels % num_heads or (out_channels // num_heads) % 2:
            raise ValueError(
                f"out_channels ({out_channels}) must split into num_heads ({num_heads}) heads of even width (q, k take half)"
            )
        if span is not None and (span <= 0 or span % 2 == 0):
            raise ValueError(f"span must be None (global) or a positive odd int, got {span}")
        if span is None and max_length <= 0:
            raise ValueError(f"max_length must be positive, got {max_length}")
        if stride <= 0:
            raise ValueError(f"stride must be positive, got {stride}")
        self.in_channels, self.out_channels, self.axis, self.num_heads = in_channels, out_channels, axis, num_heads
        self.span, self.max_length, self.stride, self.normalize, self.backend = span, max_length, stride, normalize, backend
        self.head_dim = out_channels // num_heads
        self.query_dim = self.head_dim // 2
        self.radius = max_length - 1 if span is None else span // 2
        self.qkv = nn.Conv2d(in_channels, 2 * out_channels, 1, bias=False)
        self.bn_qkv = nn.BatchNorm2d(2 * out_channels) if normalize else nn.Identity()
        self.bn_logits = nn.BatchNorm2d(3 * num_heads) if normalize else None
        self.bn_output = nn.BatchNorm1d(2 * out_channels) if normalize else None
        # one row per offset −radius..radius: [r^q | r^k | r^v], shared by all heads
        self.relative = nn.Parameter(torch.randn(2 * self.radius + 1, 2 * self.head_dim) * self.head_dim**-0.5)
        nn.init.normal_(self.qkv.weight, std=in_channels**-0.5)

    def _logit_norm(self, terms: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        if self.bn_logits is None:
            return terms * self.query_dim**-0.5
        flat = rearrange(terms, "b t n o p -> b (t n) o p")
        return rearrange(masked_batch_norm(self.bn_logits, flat, valid), "b (t n) o p -> b t n o p", t=3)

    def _output_norm(self, parts: torch.Tensor) -> torch.Tensor:
        flat = rearrange(parts, "b t n l d -> b (t n d) l")
        return rearrange(self.bn_output(flat), "b (t n d) l -> b t n l d", t=2, n=self.num_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        qkv = self.bn_qkv(self.qkv(x))
        lines = "b (n c) h w -> (b w) n h c" if self.axis == "height" else "b (n c) h w -> (b h) n w c"
        qkv = rearrange(qkv, lines, n=self.num_heads)
        q, k, v = qkv.split([self.query_dim, self.query_dim, self.head_dim], dim=-1)
        rel_q, rel_k, rel_v = self.relative.split([self.query_dim, self.query_dim, self.head_dim], dim=-1)
        out = axial_attention1d(
            q, k, v, rel_q=rel_q, rel_k=rel_k, rel_v=rel_v, logit_norm=self._logit_norm,
            output_norm=self._output_norm if self.bn_output is not None else None, backend=self.backend,
        )
        if self.axis == "height":
            out = rearrange(out, "(b w) n h d -> b (n d) h w", b=batch)
            pool = (self.stride, 1)
        else:
            out = rearrange(out, "(b h) n w d -> b (n d) h w", b=batch)
            pool = (1, self.stride)
        if self.stride > 1:
            out = F.avg_pool2d(out, pool, pool, ceil_mode=True)
        return out

    def extra_macs(self, input_shape: torch.Size) -> int:
        """Multiply-adds of the attention itself (the 1×1 q/k/v projection is counted as a conv)."""
        batch, _, height, width = input_shape
        length, lines = (height, width) if self.axis == "height" else (width, height)
        radius = min(self.radius, length - 1)
        return axial_attention1d_macs(
            batch=batch * lines, heads=self.num_heads, length=length, radius=radius,
            dim=self.query_dim, value_dim=self.head_dim,
        )

    def extra_repr(self) -> str:
        span = "global" if self.span is None else self.span
        return (
            f"{self.in_channels}, {self.out_channels}, axis={self.axis!r}, num_heads={self.num_heads}, span={span}, "
            f"max_length={self.max_length}, stride={self.stride}, normalize={self.normalize}"
        )
