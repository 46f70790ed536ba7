"""The stand-alone local self-attention layer (paper §2, SPEC §2)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sasa.functional import local_attention2d_packed
from sasa.functional._checks import check_kernel_size
from sasa.functional.flops import local_attention2d_macs
from sasa.layers.relative_position import RelativePositionEmbedding2d

POSITIONAL_CHOICES = ("relative", "absolute", "none")


class LocalSelfAttention2d(nn.Module):
    """Multi-head attention over each pixel's k×k neighbourhood; a drop-in for a 3×3 conv.

    Input (B, C_in, H, W) -> output (B, C_out, ceil(H/stride), ceil(W/stride)).
    stride 2 attends at the input resolution, then 2×2 average-pools (paper §3.1).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int = 7,
        num_heads: int = 8,
        stride: int = 1,
        positional: str = "relative",
        content: bool = True,
        qkv_bias: bool = False,
        input_size: tuple[int, int] | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        check_kernel_size(kernel_size)
        if num_heads <= 0 or out_channels % num_heads:
            raise ValueError(f"out_channels ({out_channels}) must be divisible by num_heads ({num_heads})")
        if out_channels % 2:
            raise ValueError(f"out_channels must be even (row and column embeddings take half each), got {out_channels}")
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if positional not in POSITIONAL_CHOICES:
            raise ValueError(f"positional must be one of {POSITIONAL_CHOICES}, got {positional!r}")
        if not content and positional != "relative":
            raise ValueError(f"content=False leaves only the q·r logit, which needs positional='relative', got {positional!r}")
        if positional == "absolute" and input_size is None:
            raise ValueError("positional='absolute' needs input_size=(H, W): the embedding is learned per pixel")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.num_heads, self.stride = kernel_size, num_heads, stride
        self.positional, self.content, self.backend = positional, content, backend
        self.head_dim = out_channels // num_heads
        self.qkv = nn.Conv2d(in_channels, 3 * out_channels, 1, bias=qkv_bias)
        self.rel_pos = RelativePositionEmbedding2d(out_channels, kernel_size) if positional == "relative" else None
        self.abs_pos = (
            nn.Parameter(torch.randn(out_channels, *input_size) * 0.02) if positional == "absolute" else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)
        q, k, v = qkv.chunk(3, dim=1)
        if self.abs_pos is not None:
            if tuple(x.shape[-2:]) != tuple(self.abs_pos.shape[-2:]):
                raise ValueError(
                    f"positional='absolute' was built for input size {tuple(self.abs_pos.shape[-2:])}, got {tuple(x.shape[-2:])}"
                )
            k = k + self.abs_pos
        if not self.content:
            k = torch.zeros_like(k)
        if self.abs_pos is not None or not self.content:
            qkv = torch.cat([q, k, v], dim=1)
        rel_pos = self.rel_pos(self.num_heads) if self.rel_pos is not None else None
        # the layout-native entry: the kernel reads the projection in place and writes (B, C, H, W)
        out = local_attention2d_packed(
            qkv, num_heads=self.num_heads, kernel_size=self.kernel_size, rel_pos=rel_pos,
            scale=self.head_dim**-0.5, backend=self.backend,
        )
        if self.stride == 2:
            out = F.avg_pool2d(out, 2, 2, ceil_mode=True)
        return out

    def extra_macs(self, input_shape: torch.Size) -> int:
        """Multiply-adds of the attention itself (the 1×1 projections are counted as convs)."""
        b, _, h, w = input_shape
        return local_attention2d_macs(
            batch=b, heads=self.num_heads, height=h, width=w, dim=self.head_dim, value_dim=self.head_dim,
            kernel_size=self.kernel_size, relative=self.rel_pos is not None,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, num_heads={self.num_heads}, "
            f"stride={self.stride}, positional={self.positional!r}, content={self.content}"
        )
