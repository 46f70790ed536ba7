"""The attention stem with spatially-aware values (paper §3.2; contract: docs/stem.md)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.autograd.function import once_differentiable

from sasa.functional import cpu_fused
from sasa.layers.relative_position import RelativePositionEmbedding2d

STEM_VALUE_KINDS = ("spatially-aware", "plain", "conv")  # paper Table 7
STEM_INITS = ("paper", "patchify")


def check_stem_init(init: str, *, values: str, num_value_mixtures: int, block_size: int = 4, name: str = "init") -> None:
    """ValueError (naming the option ``name``) unless ``init`` is one of STEM_INITS and fits the stem's values."""
    if init not in STEM_INITS:
        raise ValueError(f"{name} must be one of {STEM_INITS}, got {init!r}")
    if init == "patchify" and (values != "spatially-aware" or num_value_mixtures != block_size**2):
        raise ValueError(f"{name}='patchify' needs spatially-aware values with one value matrix per block position "
                         f"(num_value_mixtures={block_size**2}), got values={values!r}, "
                         f"num_value_mixtures={num_value_mixtures}")


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

    ``init="patchify"`` (not the paper's; needs ``num_value_mixtures == block_size²``) starts the layer as a
    linear 4×4 patch embedding: zero queries (uniform attention over the block, so every pixel of a block
    outputs the same average and the max pool returns it) and mixture weights p(a, b, ·) peaked (≈ 0.98) on
    value matrix a·s + b, so the block's output is Σ_(a,b) W_V^(a,b) x_ab / s², a full-rank 4×4 stride-4
    convolution. With random mixtures the start is nearly a 4×4 average pool: the block's detail is lost.
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
        values: str = "spatially-aware",
        init: str = "paper",
    ) -> None:
        super().__init__()
        if out_channels % num_heads or out_channels % 2:
            raise ValueError(f"out_channels ({out_channels}) must be even and divisible by num_heads ({num_heads})")
        if num_value_mixtures < 1:
            raise ValueError(f"num_value_mixtures must be >= 1, got {num_value_mixtures}")
        if values not in STEM_VALUE_KINDS:
            raise ValueError(f"values must be one of {STEM_VALUE_KINDS}, got {values!r}")
        check_stem_init(init, values=values, num_value_mixtures=num_value_mixtures, block_size=block_size)
        if init == "patchify" and out_channels < 2 * block_size:
            raise ValueError(f"init='patchify' needs out_channels >= 2 * block_size ({2 * block_size}), got {out_channels}")
        if values != "spatially-aware":
            num_value_mixtures = 1  # one value projection (plain), or none at all (conv)
        self.values_kind = values
        self.block_size, self.num_heads, self.num_value_mixtures = block_size, num_heads, num_value_mixtures
        self.in_channels, self.out_channels = in_channels, out_channels
        self.head_dim = out_channels // num_heads
        projection_std = in_channels**-0.5
        self.query = nn.Parameter(torch.randn(out_channels, in_channels) * projection_std)
        self.key = nn.Parameter(torch.randn(out_channels, in_channels) * projection_std)
        self.values = self.value_row = self.value_col = self.value_mix = self.value_conv = None
        if values == "conv":
            # "same" 4×4 conv (padding 1 before, 2 after): the value of a pixel sees its 4×4 neighbourhood
            self.value_conv = nn.Sequential(nn.ZeroPad2d((1, 2, 1, 2)), nn.Conv2d(in_channels, out_channels, 4, bias=False))
        else:
            self.values = nn.Parameter(torch.randn(num_value_mixtures, out_channels, in_channels) * projection_std)
        if values == "spatially-aware":
            self.value_row = nn.Parameter(torch.randn(block_size, out_channels))
            self.value_col = nn.Parameter(torch.randn(block_size, out_channels))
            self.value_mix = nn.Parameter(torch.randn(num_value_mixtures, out_channels) * out_channels**-0.5)
        self.rel_pos = RelativePositionEmbedding2d(out_channels, 2 * block_size - 1)
        self.init = init
        if init == "patchify":
            self.patchify_()
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(pool_size, pool_size, ceil_mode=True)
        pos = torch.arange(block_size)
        offset = pos[None, :] - pos[:, None] + block_size - 1  # [query pos, key pos] along one axis
        s2 = block_size * block_size
        self.register_buffer("_row_offset", offset[:, None, :, None].expand(-1, block_size, -1, block_size).reshape(s2, s2), persistent=False)
        self.register_buffer("_col_offset", offset[None, :, None, :].expand(block_size, -1, block_size, -1).reshape(s2, s2), persistent=False)

    @torch.no_grad()
    def patchify_(self, *, peak: float = 6.0) -> None:
        """Start as a linear patch embedding (class docstring): zero queries, p(a, b, ·) peaked on matrix a·s + b.

        Row a's embedding is ``peak`` in channel a, column b's ``peak`` in channel s + b, and ν^(a', b') is 1 in
        channels a' and s + b': the logit of matrix (a', b') at (a, b) is peak·([a = a'] + [b = b']), so
        p = e^(2·peak) / (e^(2·peak) + 2(s-1)·e^peak + (s-1)²) ≈ 0.98 on the pixel's own matrix at peak 6.
        """
        s = self.block_size
        self.query.zero_()
        self.value_row.zero_()
        self.value_col.zero_()
        self.value_mix.zero_()
        positions = torch.arange(s)
        self.value_row[positions, positions] = peak
        self.value_col[positions, s + positions] = peak
        matrix = torch.arange(s * s)
        self.value_mix[matrix, matrix // s] = 1.0
        self.value_mix[matrix, s + matrix % s] = 1.0

    def mixture_weights(self) -> torch.Tensor:
        """(block, block, m): p(a, b, m), the softmax over the m value matrices per in-block position."""
        if self.value_mix is None:  # one value projection: weight 1 everywhere
            return self.query.new_ones(self.block_size, self.block_size, 1)
        emb = self.value_row[:, None, :] + self.value_col[None, :, :]
        return torch.einsum("abc,mc->abm", emb, self.value_mix).softmax(dim=-1)

    def _relative_logits(self, pixels: torch.Tensor, query_weight: torch.Tensor) -> torch.Tensor:
        """(B, L, s², C_in) -> (B, N, L, s², s²): q·cat(row[Δa], col[Δc]) = x·(W_Q,rowᵀ row[Δa]) + x·(W_Q,colᵀ col[Δc])."""
        half = self.out_channels // 2
        row = F.pad(self.rel_pos.row, (0, half))  # the row embedding lives in channels [0, C/2)
        col = F.pad(self.rel_pos.col, (half, 0))  # the column embedding in [C/2, C)
        query_pos = torch.arange(self.block_size**2, device=pixels.device)[:, None]
        logits = []
        for table, offset in ((row, self._row_offset), (col, self._col_offset)):
            per_head = rearrange(table, "o (n d) -> n d o", n=self.num_heads)
            folded = torch.matmul(query_weight.transpose(1, 2), per_head)  # (N, C_in, 2s-1)
            logits.append(torch.einsum("blpc,nco->bnlpo", pixels, folded)[..., query_pos, offset])
        return logits[0] + logits[1]

    def attend(self, x: torch.Tensor, *, always_mask: bool = False) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H, W): the block attention before BN, ReLU and pooling.

        ``always_mask``: build the padded-pixel mask even when nothing is padded (then all True), so that a
        graph traced at one image size (ONNX export) stays right at sizes that are not multiples of the block.
        """
        s, n = self.block_size, self.num_heads
        height, width = x.shape[-2:]
        # ceiling division, not (-height) % s: with dynamic sizes a symbolic modulo reaches BatchNorm's n/(n-1)
        # factor, which inductor (torch 2.14) cannot turn into a tensor expression (no python_mod in tensorify)
        blocks_y, blocks_x = (height + s - 1) // s, (width + s - 1) // s
        pad_h, pad_w = blocks_y * s - height, blocks_x * s - width
        x = F.pad(x, (0, pad_w, 0, pad_h))
        pixels = rearrange(x, "b c (y a) (z e) -> b (y z) (a e) c", a=s, e=s)  # (B, L, s², C_in)
        query_weight = self.query.view(n, self.head_dim, -1) * self.head_dim**-0.5
        bilinear = torch.matmul(query_weight.transpose(1, 2), self.key.view(n, self.head_dim, -1))  # (N, C_in, C_in)
        folded_queries = torch.einsum("blpc,nce->bnlpe", pixels, bilinear)
        logits = torch.matmul(folded_queries, pixels.transpose(-1, -2).unsqueeze(1))
        logits = logits + self._relative_logits(pixels, query_weight)
        # compiled with dynamic sizes: always mask, rather than guard (and recompile) on the padding being zero
        if always_mask or torch.compiler.is_compiling() or pad_h or pad_w:
            valid = F.pad(x.new_ones(1, 1, height, width, dtype=torch.bool), (0, pad_w, 0, pad_h))
            valid = rearrange(valid, "1 1 (y a) (z e) -> (y z) (a e)", a=s, e=s)
            logits = logits.masked_fill(~valid[:, None, :], float("-inf"))
        if self.value_conv is not None:
            conv_values = F.pad(self.value_conv(x[..., :height, :width]), (0, pad_w, 0, pad_h))
            values = rearrange(conv_values, "b o (y a) (z e) -> b (y z) (a e) o", a=s, e=s)
        else:
            value_weight = torch.einsum("pm,moc->poc", self.mixture_weights().reshape(s * s, -1), self.values)
            values = torch.einsum("blpc,poc->blpo", pixels, value_weight)
        values = rearrange(values, "b l p (n d) -> b n l p d", n=n)
        out = torch.matmul(logits.softmax(dim=-1), values)
        out = rearrange(out, "b n (y z) (a e) d -> b (n d) (y a) (z e)", y=blocks_y, z=blocks_x, a=s, e=s)
        return out[..., :height, :width]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fused_pool_applies(x):
            return self._attend_bn_relu_pool(x)
        return self.pool(self.relu(self.bn(self.attend(x))))

    def _fused_pool_applies(self, x: torch.Tensor) -> bool:
        """The fused path needs pool windows equal to the attention blocks, no padded pixels, float32/64 without autocast."""
        s, pool = self.block_size, self.pool
        return (
            # under torch.compile only the C++ kernel's custom ops trace (_StemPeaks' backward calls autograd.grad);
            # export and ONNX keep the plain path's standard ops
            _traceable(x)
            and isinstance(pool, nn.MaxPool2d) and pool.kernel_size in (s, (s, s)) and pool.stride in (s, (s, s))
            and pool.padding in (0, (0, 0)) and pool.dilation in (1, (1, 1))
            and type(self.bn) is nn.BatchNorm2d and self.bn.affine and type(self.relu) is nn.ReLU
            and x.numel() > 0 and x.shape[-2] % s == 0 and x.shape[-1] % s == 0
            and x.dtype in (torch.float32, torch.float64) and x.device.type != "meta"  # profiling: shapes only
            and not torch.is_autocast_enabled(x.device.type)
            and self.value_conv is None  # conv values are not a per-pixel linear map of x
        )

    def _attend_bn_relu_pool(self, x: torch.Tensor) -> torch.Tensor:
        """``pool(relu(bn(attend(x))))`` without BN, ReLU or pooling at full resolution (same values and gradients).

        Exact re-associations, blocked layout (M = B·blocks, S = s² pixels per block, N heads):
        * the value of key j is Σ_m p(j, m) W_V^m x_j, so out_p = W_cat · y_p with the (m·C_in)-vector
          y_p = Σ_j P_pj (p(j, ·) ⊗ x_j);
        * BN's batch statistics of out follow from the mean and second moment of y (m·C_in numbers);
        * BN is a per-channel affine map a·out + b and ReLU is monotone, so the max pool over a block
          (= one pool window) commutes with them: max_p relu(a·out_p + b) = relu(|a|·max_p(sign(a)·out_p) + b).
          sign(a) = sign(γ) is known before the statistics, so it is folded into W_cat.
        The block attention runs in chunks of blocks (:class:`_StemPeaks`; on CPU the C++ kernel,
        :func:`stem_peaks_forward`): no full-resolution tensor is allocated or saved, and the backward recomputes
        each chunk.
        """
        s, n, dim = self.block_size, self.num_heads, self.head_dim
        batch, cin, height, width = x.shape
        blocks_y, blocks_x = height // s, width // s
        pixels = rearrange(x, "b c (y a) (z e) -> (b y z) (a e) c", a=s, e=s)  # (M, S, C_in)
        query_weight = self.query.view(n, dim, cin) * dim**-0.5
        bilinear = torch.matmul(query_weight.transpose(1, 2), self.key.view(n, dim, cin))  # (N, C_in, C_in)
        # q·r: R[n, p, j] = W_Qᵀ cat(row[Δa], col[Δc]) is a parameter-only (N, S, S, C_in) table
        table = self.rel_pos(n)[:, self._row_offset, self._col_offset]  # (N, S, S, D)
        rel = torch.matmul(table, query_weight.unsqueeze(1))  # (N, S, S, C_in)
        mix = self.mixture_weights().reshape(s * s, self.num_value_mixtures)
        w_cat = rearrange(self.values, "m (n d) c -> n d (m c)", n=n)  # W_cat[n, d, (m, c)] = W_V^m[n·D + d, c]
        bn = self.bn
        sign = torch.where(bn.weight.detach() < 0, -1.0, 1.0).to(x.dtype).view(n, dim, 1)
        use_batch_stats = self.training or bn.running_mean is None
        peaks = stem_peaks_forward if _fused_kernel_available(x) else _StemPeaks.apply
        peak, y_sum, y_gram = peaks(pixels, bilinear, rel, mix, w_cat * sign, use_batch_stats)
        if use_batch_stats:
            count = pixels.shape[0] * pixels.shape[1]
            y_mean = y_sum / count  # (N, K), float64
            cov = y_gram / count - y_mean[:, :, None] * y_mean[:, None, :]
            w64 = w_cat.to(torch.float64)
            mean64 = torch.einsum("ndk,nk->nd", w64, y_mean).reshape(-1)
            var64 = torch.einsum("ndk,nkl,ndl->nd", w64, cov, w64).reshape(-1).clamp_min(0)
            if self.training and bn.track_running_stats and bn.running_mean is not None:
                self._update_running_stats(mean64.detach().to(x.dtype), (var64.detach() * count / max(count - 1, 1)).to(x.dtype))
            mean, var = mean64.to(x.dtype), var64.to(x.dtype)
        else:
            mean, var = bn.running_mean, bn.running_var
        scale = bn.weight * torch.rsqrt(var + bn.eps)
        shift = bn.bias - mean * scale
        pooled = torch.relu(peak * scale.abs().view(n, 1, dim) + shift.view(n, 1, dim))  # (N, M, D)
        return rearrange(pooled, "n (b y z) d -> b (n d) y z", b=batch, y=blocks_y, z=blocks_x).contiguous()

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        """What ``nn.BatchNorm2d`` does with its running statistics in training mode."""
        bn = self.bn
        factor = 0.0 if bn.momentum is None else bn.momentum
        if bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            if bn.momentum is None:
                factor = 1.0 / float(bn.num_batches_tracked)
        bn.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
        bn.running_var.mul_(1 - factor).add_(unbiased_var, alpha=factor)

    def extra_macs(self, input_shape: torch.Size) -> int:
        """Multiply-adds of the layer as the paper defines it, per pixel: the q and k projections, the m value
        projections and their mixing, and k² per channel for each of q·k, q·r and the weighted sum.

        This is the count that reproduces Table 1; the re-associated implementation performs fewer.
        """
        b, _, h, w = input_shape
        window = self.block_size**2
        value_projections = 0 if self.value_conv is not None else self.num_value_mixtures  # the conv counts itself
        projections = (2 + value_projections) * self.in_channels * self.out_channels
        mixing = self.num_value_mixtures * self.out_channels if self.value_mix is not None else 0
        per_pixel = projections + mixing + 3 * window * self.out_channels
        return b * h * w * per_pixel


_STEM_CHUNK_PIXELS = 16384  # pixels per chunk: its (pixels, C_out) output stays a few MB, reused by the allocator


def _stem_chunk(pixels, bilinear, rel, mix, w_signed, stats: bool):
    """Block attention of a chunk of blocks, reduced: (per-block max of sign(γ)·out, Σ y, Σ y yᵀ).

    pixels (Mc, S, C_in); bilinear (N, C_in, C_in); rel (N, S, S, C_in); mix (S, m); w_signed (N, D, m·C_in).
    Returns peak (N, Mc, D) and, if ``stats``, Σ_p y_p (N, K) and Σ_p y_p y_pᵀ (N, K, K) in float64.
    """
    logits = torch.matmul(torch.matmul(pixels, bilinear.unsqueeze(1)), pixels.transpose(1, 2))  # (N, Mc, S, S)
    rel_logits = torch.matmul(pixels.transpose(0, 1), rel.transpose(-1, -2))  # (N, S, Mc, S)
    probs = (logits + rel_logits.transpose(1, 2)).softmax(dim=-1)
    mixed = (mix[None, :, :, None] * pixels[:, :, None, :]).flatten(2)  # (Mc, S, K = m·C_in)
    y = torch.matmul(probs, mixed).flatten(1, 2)  # (N, Mc·S, K)
    out = torch.matmul(y, w_signed.transpose(1, 2))  # (N, Mc·S, D)
    peak = out.view(out.shape[0], pixels.shape[0], pixels.shape[1], -1).amax(dim=2)
    if not stats:
        return peak, None, None
    y64 = y.to(torch.float64)
    return peak, y64.sum(dim=1), torch.matmul(y64.transpose(1, 2), y64)


class _StemPeaks(torch.autograd.Function):
    """:func:`_stem_chunk` over all blocks, chunk by chunk; the backward recomputes each chunk (nothing saved
    but the inputs)."""

    @staticmethod
    def forward(ctx, pixels, bilinear, rel, mix, w_signed, stats: bool):
        step = max(1, _STEM_CHUNK_PIXELS // pixels.shape[1])
        peaks, y_sum, y_gram = [], 0, 0
        for start in range(0, pixels.shape[0], step):
            peak, s1, s2 = _stem_chunk(pixels[start:start + step], bilinear, rel, mix, w_signed, stats)
            peaks.append(peak)
            if stats:
                y_sum, y_gram = y_sum + s1, y_gram + s2
        if not stats:
            y_sum = y_gram = pixels.new_zeros((), dtype=torch.float64)
        ctx.save_for_backward(pixels, bilinear, rel, mix, w_signed)
        ctx.stats, ctx.step = stats, step
        return torch.cat(peaks, dim=1), y_sum, y_gram

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_peak, grad_sum, grad_gram):
        pixels, *params = ctx.saved_tensors
        params = [p.detach().requires_grad_(need) for p, need in zip(params, ctx.needs_input_grad[1:5])]
        wanted = [p for p in params if p.requires_grad]
        totals = [torch.zeros_like(p) for p in wanted]
        grad_pixels = torch.zeros_like(pixels) if ctx.needs_input_grad[0] else None
        for start in range(0, pixels.shape[0], ctx.step):
            chunk = pixels[start:start + ctx.step].detach().requires_grad_(grad_pixels is not None)
            with torch.enable_grad():
                peak, s1, s2 = _stem_chunk(chunk, *params, ctx.stats)
                outputs, grads = [peak], [grad_peak[:, start:start + ctx.step]]
                if ctx.stats:
                    outputs += [s1, s2]
                    grads += [grad_sum, grad_gram]
                inputs = wanted + ([chunk] if grad_pixels is not None else [])
                result = torch.autograd.grad(outputs, inputs, grads, allow_unused=True)
            for total, g in zip(totals, result):
                if g is not None:
                    total += g
            if grad_pixels is not None and result[-1] is not None:
                grad_pixels[start:start + ctx.step] = result[-1]
        it = iter(totals)
        param_grads = [next(it) if p.requires_grad else None for p in params]
        return (grad_pixels, *param_grads, None)


def _traceable(x: torch.Tensor) -> bool:
    """Whether the fused stem may run here: always in eager mode; while compiling only through the custom ops,
    and never while exporting (torch.export, ONNX) or tracing, whose graphs must hold standard ops."""
    if torch.compiler.is_exporting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return False
    return not torch.compiler.is_compiling() or _fused_kernel_available(x)


def _fused_kernel_available(x: torch.Tensor) -> bool:
    """Whether the C++ extension (``stem_forward``/``stem_backward``) runs :class:`_StemPeaks` for ``x``."""
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and _extension_loads()


@torch._dynamo.assume_constant_result  # decided once, outside the graph: loading builds and imports the extension
def _extension_loads() -> bool:
    return cpu_fused.load_extension() is not None


# The C++ stem kernel as PyTorch custom ops (as sasa.functional.cpu_fused does for the attention op): a fake
# implementation gives the output shapes, the autograd formula calls the backward op, so torch.compile traces the
# fused stem as one node (without it, a compiled sa_resnet26 ran the plain stem: its fwd+bwd alone took 152 ms
# where the kernel takes 29 ms; batch 8, 112x112, 1 thread). The ops sum the kernel's per-chunk partials (the
# chunk count follows the block count and is not a shape the callers need).
@torch.library.custom_op("sasa::stem_peaks_forward", mutates_args=())
def stem_peaks_forward(
    pixels: torch.Tensor, bilinear: torch.Tensor, rel: torch.Tensor, mix: torch.Tensor, w_signed: torch.Tensor,
    stats: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:class:`_StemPeaks` in the C++ kernel (``csrc/attention_stem_cpu.cpp``): one pass per block of pixels,
    the backward recomputes each block; reductions are summed from per-chunk partials (thread-count
    independent). :func:`_stem_chunk`'s inputs -> peak (N, M, D), Σ y (N, K) and Σ y yᵀ (N, K, K) in float64
    (0-dim zeros without ``stats``)."""
    # contiguous here, not (only) by the caller: inside a compiled graph the op receives whatever strides
    # inductor chose, and the kernel reads raw memory
    tensors = [t.contiguous() for t in (pixels, bilinear, rel, mix, w_signed)]
    peak, y_sum, y_gram = cpu_fused.load_extension().stem_forward(*tensors, stats)
    if stats:
        return peak, y_sum.sum(0), y_gram.sum(0)
    return peak, pixels.new_zeros((), dtype=torch.float64), pixels.new_zeros((), dtype=torch.float64)


@stem_peaks_forward.register_fake
def _(pixels, bilinear, rel, mix, w_signed, stats):
    heads, dim, k = w_signed.shape
    sum_shape, gram_shape = ((heads, k), (heads, k, k)) if stats else ((), ())
    return (pixels.new_empty((heads, pixels.shape[0], dim)), pixels.new_empty(sum_shape, dtype=torch.float64),
            pixels.new_empty(gram_shape, dtype=torch.float64))


@torch.library.custom_op("sasa::stem_peaks_backward", mutates_args=())
def stem_peaks_backward(
    grad_peak: torch.Tensor, grad_sum: torch.Tensor, grad_gram: torch.Tensor, pixels: torch.Tensor,
    bilinear: torch.Tensor, rel: torch.Tensor, mix: torch.Tensor, w_signed: torch.Tensor, stats: bool,
    need_pixels: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> gradients of bilinear, rel, mix, w_signed and pixels (pixels': (0,) unless ``need_pixels``)."""
    tensors = [t.contiguous() for t in (grad_peak, grad_sum, grad_gram, pixels, bilinear, rel, mix, w_signed)]
    d_bilinear, d_rel, d_mix, d_w, d_pixels = cpu_fused.load_extension().stem_backward(*tensors, stats, need_pixels)
    return d_bilinear.sum(0), d_rel.sum(0), d_mix.sum(0), d_w.sum(0), d_pixels


@stem_peaks_backward.register_fake
def _(grad_peak, grad_sum, grad_gram, pixels, bilinear, rel, mix, w_signed, stats, need_pixels):
    d_pixels = torch.empty_like(pixels) if need_pixels else pixels.new_empty((0,))
    return (torch.empty_like(bilinear), torch.empty_like(rel), torch.empty_like(mix), torch.empty_like(w_signed),
            d_pixels)


def _save_stem_inputs(ctx, inputs, output) -> None:
    *tensors, stats = inputs
    ctx.save_for_backward(*tensors)
    ctx.stats = stats


def _stem_peaks_backward(ctx, grad_peak, grad_sum, grad_gram):
    need = ctx.needs_input_grad
    heads, _, k = ctx.saved_tensors[-1].shape
    shapes = ((heads, k), (heads, k, k)) if ctx.stats else ((), ())
    # an output that reached no loss has no gradient: the kernel reads zeros instead
    grad_sum, grad_gram = (g if g is not None else grad_peak.new_zeros(shape, dtype=torch.float64)
                           for g, shape in zip((grad_sum, grad_gram), shapes))
    d_bilinear, d_rel, d_mix, d_w, d_pixels = stem_peaks_backward(
        grad_peak, grad_sum, grad_gram, *ctx.saved_tensors, ctx.stats, need[0]
    )
    grads = [g if wanted else None for g, wanted in zip((d_bilinear, d_rel, d_mix, d_w), need[1:5])]
    return (d_pixels if need[0] else None, *grads, None)


stem_peaks_forward.register_autograd(_stem_peaks_backward, setup_context=_save_stem_inputs)

