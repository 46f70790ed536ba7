"""The attention layer's 1×1 q/k/v projection through oneDNN on CPU at inference (same values as the conv).

PyTorch sends a float32 1×1 conv with batch < 16 on one thread to its generic ("THNN") GEMM path on the
assumption that oneDNN is slower there; where oneDNN runs AVX-512 and the GEMM library does not (MKL on
AMD CPUs), oneDNN's 1×1 forward is about 2× faster (``benchmarks/bench_models.py``: inference). Without
autograd :func:`project` calls oneDNN directly; with autograd it keeps the conv (a oneDNN forward with a
GEMM backward measured no faster in a train step and kept more memory). Eager mode only (not while
compiling, tracing or exporting), float32 CPU tensors.
"""
from __future__ import annotations

import torch
from torch import nn


def _applies(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    # first: dynamo refuses to trace torch.backends.mkldnn.is_available (a graph break under fullgraph=True)
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export():
        return False
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in conv.parameters()))
    return (
        not needs_grad
        and x.device.type == "cpu" and x.dtype == torch.float32 and conv.weight.dtype == torch.float32
        and x.dim() == 4 and x.numel() > 0
        and conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding in ((0, 0), "valid")
        and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros"
        and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
        and not torch.is_autocast_enabled("cpu")
    )


def project(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a 1×1 conv; through oneDNN on float32 CPU tensors without autograd, in eager mode."""
    if not _applies(conv, x):
        return conv(x)
    return torch.ops.aten.mkldnn_convolution(x.contiguous(), conv.weight, conv.bias, [0, 0], [1, 1], [1, 1], 1)
