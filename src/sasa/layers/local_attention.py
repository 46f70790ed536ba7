"""The stand-alone local self-attention layer and its options (paper §2; contract: docs/layer.md)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from sasa.functional import local_attention2d_packed
from sasa.functional._checks import check_integer, check_kernel_size, check_padding
from sasa.functional.dispatch import check_backend_name
from sasa.functional.flops import local_attention2d_macs
from sasa.layers.absolute_position import sinusoidal_position_2d
from sasa.layers.projection import project
from sasa.layers.relative_position import RelativePositionEmbedding2d

POSITIONAL_CHOICES = ("relative", "absolute", "none")


@dataclass(frozen=True)
class AttentionConfig:
    """Every option of a local self-attention layer except its widths and stride; checked at construction.

    ``positional``: "relative" (row/column offset embeddings, logit q·(k + r)), "absolute" (2-D sinusoids
    of the key pixel's position added to the keys) or "none". ``content=False`` drops q·k (keys are zero),
    leaving the q·r logit, so it needs "relative". ``backend``: "auto" or a registered op backend.
    """

    kernel_size: int = 7
    num_heads: int = 8
    positional: str = "relative"
    content: bool = True
    qkv_bias: bool = False
    backend: str = "auto"
    padding: str = "mask"  # "zeros": out-of-image neighbours attend with zero key and value (unfold ports)
    # batch norm on the q/k/v projection before the op (as Axial-DeepLab's port, "BN in attention"); not in the
    # SASA paper, so off by default. The port's logit BN is not offered: the fused kernels never materialise logits.
    qkv_norm: bool = False
    # every head gets a row and a column half of its own (RelativePositionEmbedding2d per_head); the SPEC's
    # reading (False) slices the concatenated [row | col] table, so each head sees one axis when num_heads ≥ 2
    rel_pos_per_head: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "kernel_size", check_kernel_size(self.kernel_size))
        heads = check_integer("num_heads", self.num_heads)
        if heads <= 0:
            raise ValueError(f"num_heads must be positive, got {heads}")
        object.__setattr__(self, "num_heads", heads)
        if self.positional not in POSITIONAL_CHOICES:
            raise ValueError(f"positional must be one of {POSITIONAL_CHOICES}, got {self.positional!r}")
        for name in ("content", "qkv_bias", "qkv_norm", "rel_pos_per_head"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if not self.content and self.positional != "relative":
            raise ValueError(
                f"content=False leaves only the q·r logit, which needs positional='relative', got {self.positional!r}"
            )
        check_backend_name(self.backend)
        check_padding(self.padding)

    def check_channels(self, channels: int) -> None:
        """Refuse a layer width these options cannot split (ValueError naming both)."""
        if channels % self.num_heads:
            raise ValueError(f"out_channels ({channels}) must be divisible by num_heads ({self.num_heads})")
        if channels % 2:
            raise ValueError(f"out_channels must be even (row and column embeddings take half each), got {channels}")
        if self.rel_pos_per_head and (channels // self.num_heads) % 2:
            raise ValueError(f"rel_pos_per_head needs an even head width (row and column halves), got "
                             f"{channels} channels / {self.num_heads} heads")
        if self.positional == "absolute" and channels % 4:
            raise ValueError(f"positional='absolute' needs out_channels divisible by 4 (sin/cos of rows and columns), got {channels}")


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
        backend: str = "auto",
        padding: str = "mask",
        qkv_norm: bool = False,
        rel_pos_per_head: bool = False,
    ) -> None:
        super().__init__()
        config = AttentionConfig(
            kernel_size=kernel_size, num_heads=num_heads, positional=positional, content=content,
            qkv_bias=qkv_bias, backend=backend, padding=padding, qkv_norm=qkv_norm,
            rel_pos_per_head=rel_pos_per_head,
        )
        config.check_channels(out_channels)
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.config = config
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.kernel_size, self.num_heads = config.kernel_size, config.num_heads
        self.positional, self.content, self.backend = config.positional, config.content, config.backend
        self.head_dim = out_channels // config.num_heads
        # content=False (paper Table 6, q·r only) has no key projection at all: the conv makes [q | v]
        self.qkv = nn.Conv2d(in_channels, (3 if content else 2) * out_channels, 1, bias=qkv_bias)
        # per-channel BN of [q | k | v]: zero-mean, unit-scale q and k fix the logit scale whatever the input's
        self.qkv_norm = nn.BatchNorm2d(self.qkv.out_channels) if qkv_norm else None
        self.rel_pos = (RelativePositionEmbedding2d(out_channels, config.kernel_size, per_head=rel_pos_per_head)
                        if positional == "relative" else None)
        self.reset_parameters()

    @classmethod
    def from_config(cls, in_channels: int, out_channels: int, *, stride: int = 1, config: AttentionConfig) -> "LocalSelfAttention2d":
        """The spatial-mixer entry point (``sasa.layers.spatial``): widths and stride plus the options object."""
        return cls(in_channels, out_channels, stride=stride, **dataclasses.asdict(config))

    def reset_parameters(self) -> None:
        # fan-in init keeps the q·k logits O(1) at the start; a conv's fan_out init would make them large
        nn.init.kaiming_normal_(self.qkv.weight, mode="fan_in", nonlinearity="linear")
        if self.qkv.bias is not None:
            nn.init.zeros_(self.qkv.bias)
        if self.rel_pos is not None:
            self.rel_pos.reset_parameters()
        if self.qkv_norm is not None:
            self.qkv_norm.reset_parameters()

    def point_heads_at_(self, offsets: list[tuple[int, int]], *, logit: float = 10.0, bias: float = 2.0) -> None:
        """In place: head n's positional logit starts peaked on window offset ``offsets[n % len(offsets)]``.

        A conv-like start (Cordonnier et al., 2020: N heads attending to N fixed offsets act as a conv):
        q's bias is ``bias`` on the first row and first column channel of each head, and those two
        channels of the head's row/column embeddings are s = logit·√D / (2·bias) at the chosen offset and 0 elsewhere, so
        the bias alone adds ``logit`` (after the 1/√D scaling) at that offset, ``logit/2`` where one
        coordinate matches, 0 elsewhere; W_Q x still adds content-dependent q·r terms. Needs
        ``qkv_bias=True`` and ``rel_pos_per_head=True`` (a 2-D offset per head), and no ``qkv_norm``
        (its batch norm would subtract the bias again).
        """
        if self.qkv.bias is None or self.rel_pos is None or not self.rel_pos.per_head or self.qkv_norm is not None:
            raise ValueError("point_heads_at_ needs qkv_bias=True, positional='relative', rel_pos_per_head=True "
                             "and qkv_norm=False")
        if not offsets:
            raise ValueError("point_heads_at_ needs at least one offset, got none")
        radius = self.kernel_size // 2
        for dy, dx in offsets:
            if max(abs(dy), abs(dx)) > radius:
                raise ValueError(f"offset ({dy}, {dx}) lies outside the {self.kernel_size}x{self.kernel_size} window")
        d = self.head_dim
        strength = logit * d**0.5 / (2 * bias)  # (bias·s + bias·s)/√D = logit
        with torch.no_grad():
            for head in range(self.num_heads):
                dy, dx = offsets[head % len(offsets)]
                channel = head * d // 2  # this head's first channel in the row table and in the column table
                self.qkv.bias[head * d] = bias  # q's channel paired with the row half, then with the column half
                self.qkv.bias[head * d + d // 2] = bias
                for table, offset in ((self.rel_pos.row, dy), (self.rel_pos.col, dx)):
                    table[:, channel] = 0.0
                    table[radius + offset, channel] = strength

    def packed_projection(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> qkv (B, 3·C_out, H, W): [q | k | v] as the op takes them (q not yet scaled)."""
        qkv = project(self.qkv, x)  # the conv, through oneDNN on CPU (sasa.layers.projection)
        if self.qkv_norm is not None:
            qkv = self.qkv_norm(qkv)
        if not self.content:  # zero keys leave the q·r logit alone
            q, v = qkv.chunk(2, dim=1)
            qkv = torch.cat([q, torch.zeros_like(q), v], dim=1)
        elif self.positional == "absolute":
            q, k, v = qkv.chunk(3, dim=1)
            k = k + sinusoidal_position_2d(self.out_channels, *x.shape[-2:], device=x.device, dtype=k.dtype)
            qkv = torch.cat([q, k, v], dim=1)
        return qkv

    def attention_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The op's inputs for input x: scaled q, k, v (B, N, H, W, D) and rel_pos (N, k, k, D) or None."""
        qkv = self.packed_projection(x)
        q, k, v = (rearrange(t, "b (n d) h w -> b n h w d", n=self.num_heads) for t in qkv.chunk(3, dim=1))
        rel_pos = self.rel_pos(self.num_heads) if self.rel_pos is not None else None
        return q * self.head_dim**-0.5, k, v, rel_pos

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.packed_projection(x)
        rel_pos = self.rel_pos(self.num_heads) if self.rel_pos is not None else None
        # the layout-native entry: the kernel reads the projection in place and writes (B, C, H, W)
        out = local_attention2d_packed(
            qkv, num_heads=self.num_heads, kernel_size=self.kernel_size, rel_pos=rel_pos,
            scale=self.head_dim**-0.5, backend=self.backend, padding=self.config.padding,
        )
        if self.stride == 2:
            out = F.avg_pool2d(out, 2, 2, ceil_mode=True)
        return out

    def extra_macs(self, input_shape: torch.Size) -> int:
        """Multiply-adds of the attention itself (the 1×1 projections are counted as convs; docs/flops.md)."""
        b, _, h, w = input_shape
        return local_attention2d_macs(
            batch=b, heads=self.num_heads, height=h, width=w, dim=self.head_dim, value_dim=self.head_dim,
            kernel_size=self.kernel_size, relative=self.rel_pos is not None, content=self.content,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, num_heads={self.num_heads}, "
            f"stride={self.stride}, positional={self.positional!r}, content={self.content}"
            + (", qkv_norm=True" if self.qkv_norm is not None else "")
            + (", rel_pos_per_head=True" if self.config.rel_pos_per_head else "")
        )
