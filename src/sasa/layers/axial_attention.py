"""Position-sensitive axial attention layer (Axial-DeepLab, SPEC §8)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from sasa.functional.axial import AXIAL_BACKENDS, axial_attention1d, axial_attention1d_macs

AXES = ("height", "width")


def _batch_norm_slice(bn: nn.BatchNorm2d, x: torch.Tensor, first: int, valid: torch.Tensor | None) -> torch.Tensor:
    """Channels ``first .. first + C`` of ``bn`` applied to x (B, C, L, L), with statistics from the entries
    where ``valid`` (L, L) is True only (all when None).

    Pairs outside a local span take no part in the softmax, so they must not shift the logits' batch
    statistics either; those entries come back as 0. The slices are views, so running statistics update in place.
    """
    channels = slice(first, first + x.shape[1])
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.momentum is None:
        raise ValueError("axial attention's logit batch norm needs a fixed momentum, got momentum=None")
    if bn.training and bn.num_batches_tracked is not None and first == 0:
        bn.num_batches_tracked.add_(1)

    def run(values: torch.Tensor) -> torch.Tensor:
        stats = (bn.running_mean[channels], bn.running_var[channels]) if bn.track_running_stats else (None, None)
        return F.batch_norm(values, *stats, bn.weight[channels], bn.bias[channels], bn.training or not bn.track_running_stats,
                            momentum, bn.eps)

    if valid is None:
        return run(x.contiguous())  # the q·r, k·r terms arrive as transposed views; BN on those is several times slower
    out = x.new_zeros(x.shape)
    out[..., valid] = run(x[..., valid])  # (B, C, V): statistics over B·V in-span pairs
    return out


def masked_batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """``bn`` over (B, C, L, L) with statistics from the in-span entries only (see ``_batch_norm_slice``)."""
    return _batch_norm_slice(bn, x, 0, None if valid is None or bool(valid.all()) else valid)


class AxialAttention2d(nn.Module):
    """Multi-head position-sensitive attention along one axis: (B, C_in, H, W) -> (B, C_out, H', W').

    Each pixel attends to the pixels of its column (``axis="height"``) or row (``axis="width"``)
    within its span, with relative embeddings for offsets up to ``max_length − 1``.
    ``span=None`` is the global span: every key the embeddings reach, i.e. the whole axis when it
    is at most ``max_length`` long (set ``max_length`` to the axis length at training resolution,
    or larger). On a longer axis a global layer falls back to the local span of the offsets it has
    embeddings for (2·max_length − 1 keys centred on the query) rather than inventing embeddings;
    on a shorter one it uses the central rows of its tables. ``span=m`` (odd) is the local span: the
    m keys centred on the query; its tables have m rows unless ``max_length`` asks for more (rows
    beyond ±(m−1)/2 are then never used: Axial-DeepLab's implementation keeps 2·255 − 1 rows in every
    layer, which is what its published parameter counts include). ``stride`` average-pools the
    output along this axis only (ceil mode), so H' = ceil(H/stride) for the height axis, W' likewise.

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
        max_length: int | None = None,
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
        if max_length is None:
            max_length = 56 if span is None else span // 2 + 1  # 56: the first stage's length at 224×224
        if max_length <= 0 or (span is not None and max_length < span // 2 + 1):
            need = "positive" if span is None else f">= {span // 2 + 1} to embed the offsets of span {span}"
            raise ValueError(f"max_length must be {need}, got {max_length}")
        if stride <= 0:
            raise ValueError(f"stride must be positive, got {stride}")
        self.in_channels, self.out_channels, self.axis, self.num_heads = in_channels, out_channels, axis, num_heads
        self.span, self.max_length, self.stride, self.normalize, self.backend = span, max_length, stride, normalize, backend
        self.head_dim = out_channels // num_heads
        self.query_dim = self.head_dim // 2
        self.radius = max_length - 1 if span is None else span // 2  # the keys attended: |p − o| <= radius
        self.qkv = nn.Conv2d(in_channels, 2 * out_channels, 1, bias=False)
        self.bn_qkv = nn.BatchNorm2d(2 * out_channels) if normalize else nn.Identity()
        self.bn_logits = nn.BatchNorm2d(3 * num_heads) if normalize else None
        self.bn_output = nn.BatchNorm1d(2 * out_channels) if normalize else None
        # one row per offset −(max_length − 1)..(max_length − 1): [r^q | r^k | r^v], shared by all heads
        self.relative = nn.Parameter(torch.empty(2 * max_length - 1, 2 * self.head_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # fan-in std keeps the logits O(1) at the start (a conv's fan_out init would make them large)
        nn.init.normal_(self.qkv.weight, std=self.in_channels**-0.5)
        nn.init.normal_(self.relative, std=self.head_dim**-0.5)
        for bn in (self.bn_qkv, self.bn_logits, self.bn_output):
            if isinstance(bn, nn.modules.batchnorm._BatchNorm):
                bn.reset_parameters()

    def _folded_logit_scales(self) -> torch.Tensor | None:
        """(3, N) per-term, per-head factors when the logit normalisation is a fixed affine map (no BN, or BN in
        evaluation mode), so the op can apply it to q and k instead of to the (L, S) logits; None in training."""
        if self.bn_logits is None:
            return self.relative.new_full((3, self.num_heads), self.query_dim**-0.5)
        bn = self.bn_logits
        if bn.training or not bn.track_running_stats:
            return None
        return (bn.weight / (bn.running_var + bn.eps).sqrt()).view(3, self.num_heads)

    def _logit_norm(self, terms: list[torch.Tensor], valid: torch.Tensor | None) -> list[torch.Tensor]:
        return [
            _batch_norm_slice(self.bn_logits, term, index * self.num_heads, valid) for index, term in enumerate(terms)
        ]

    def _output_norm(self, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        flat = rearrange(torch.stack(parts, dim=1), "b t n l d -> b (t n d) l")
        return list(rearrange(self.bn_output(flat), "b (t n d) l -> t b n l d", t=2, n=self.num_heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        qkv = self.bn_qkv(self.qkv(x))
        lines = "b (n c) h w -> (b w) n h c" if self.axis == "height" else "b (n c) h w -> (b h) n w c"
        qkv = rearrange(qkv, lines, n=self.num_heads)
        q, k, v = qkv.split([self.query_dim, self.query_dim, self.head_dim], dim=-1)
        rows = self.relative[self.max_length - 1 - self.radius : self.max_length + self.radius]
        rel_q, rel_k, rel_v = rows.split([self.query_dim, self.query_dim, self.head_dim], dim=-1)
        scales = self._folded_logit_scales()
        out = axial_attention1d(
            q, k, v, rel_q=rel_q, rel_k=rel_k, rel_v=rel_v, logit_norm=None if scales is not None else self._logit_norm,
            logit_scales=scales, output_norm=self._output_norm if self.bn_output is not None else None, backend=self.backend,
        )
        if self.axis == "height":
            out = rearrange(out, "(b w) n h d -> b (n d) h w", b=batch).contiguous()
            pool = (self.stride, 1)
        else:
            out = rearrange(out, "(b h) n w d -> b (n d) h w", b=batch).contiguous()
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


@dataclass(frozen=True)
class AxialConfig:
    """The options of an axial mixer (see :class:`AxialAttention2d`) except its widths and stride; checked at construction."""

    num_heads: int = 8
    span: int | None = None
    max_length: int | None = None
    normalize: bool = True
    backend: str = "auto"

    def __post_init__(self) -> None:
        for name in ("num_heads", "span", "max_length"):
            value = getattr(self, name)
            if value is None and name != "num_heads":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int{'' if name == 'num_heads' else ' or None'}, got {value!r}")
        if self.span is not None and self.span % 2 == 0:
            raise ValueError(f"span must be None (global) or odd, got {self.span}")
        if self.span is not None and self.max_length is not None and self.max_length < self.span // 2 + 1:
            raise ValueError(f"max_length must be >= {self.span // 2 + 1} to embed the offsets of span {self.span}, got {self.max_length}")
        if not isinstance(self.normalize, bool):
            raise TypeError(f"normalize must be a bool, got {self.normalize!r}")
        if self.backend != "auto" and self.backend not in AXIAL_BACKENDS:
            raise ValueError(f"backend must be 'auto' or one of {sorted(AXIAL_BACKENDS)}, got {self.backend!r}")

    def check_channels(self, channels: int) -> None:
        """Refuse a width these options cannot split into heads of even width (ValueError naming both)."""
        if channels % self.num_heads or (channels // self.num_heads) % 2:
            raise ValueError(
                f"out_channels ({channels}) must split into num_heads ({self.num_heads}) heads of even width (q, k take half)"
            )


class AxialMixer2d(nn.Module):
    """The axial bottleneck's spatial mixer: height-axis then width-axis attention, no 1×1 between them.

    (B, C_in, H, W) -> (B, C_out, ceil(H/stride), ceil(W/stride)). Both layers run at the input
    resolution and the output is average-pooled stride×stride after the width layer, as the public
    port does; this is the placement that reproduces the paper's multiply-add counts (pooling each
    axis right after its own layer would run the width layer at half the rows: ~6% fewer FLOPs).
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1, config: AxialConfig | None = None) -> None:
        super().__init__()
        config = config or AxialConfig()
        config.check_channels(out_channels)
        if stride <= 0:
            raise ValueError(f"stride must be positive, got {stride}")
        options = dataclasses.asdict(config)
        self.config, self.stride = config, stride
        self.height = AxialAttention2d(in_channels, out_channels, axis="height", **options)
        self.width = AxialAttention2d(out_channels, out_channels, axis="width", **options)

    @classmethod
    def from_config(cls, in_channels: int, out_channels: int, *, stride: int = 1, config: AxialConfig) -> "AxialMixer2d":
        """The spatial-mixer entry point (``sasa.layers.spatial``)."""
        return cls(in_channels, out_channels, stride=stride, config=config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.width(self.height(x))
        if self.stride > 1:
            out = F.avg_pool2d(out, self.stride, self.stride, ceil_mode=True)
        return out
