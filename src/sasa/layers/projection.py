"""The attention layer's 1×1 q/k/v projection through oneDNN on CPU (same values and gradients as the conv).

PyTorch sends a float32 1×1 conv with batch < 16 on one thread to its generic ("THNN") GEMM path, forward
and backward, on the assumption that oneDNN is slower there; where oneDNN runs AVX-512 and the GEMM library
does not (MKL on AMD CPUs), oneDNN's 1×1 forward is about 2× faster. :func:`project` runs the forward and
the input gradient as oneDNN 1×1 convolutions and the weight gradient as GEMMs accumulated over the batch
(no (B, O, C) temporary). Eager mode only (not while compiling, tracing or exporting), float32 CPU tensors;
anything else is the conv itself. Speed: ``benchmarks/bench_models.py`` (the conv baseline's own 1×1 convs
keep PyTorch's choice).

Under ``torch.compile``, :func:`conv1x1` runs a 1×1 conv as a matmul: inductor (torch 2.14, CPU) specializes a
compiled train graph with dynamic sizes to the first image size at every convolution (its conv-backward lowering
turns the symbolic strides into ints; its CPU channels-last layout makes AOTAutograd restride the saved
activations with concrete strides), and a matmul has neither.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable

_ZERO, _ONE = [0, 0], [1, 1]


def _onednn_conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (B, C, H, W), weight (O, C, 1, 1) -> (B, O, H, W) by oneDNN."""
    return torch.ops.aten.mkldnn_convolution(x, weight, bias, _ZERO, _ONE, _ONE, 1)


class _OneDnnProjection(torch.autograd.Function):
    """1×1 conv without bias: forward and input gradient by oneDNN, weight gradient Σ_b g_b x_bᵀ by GEMM."""

    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(x, weight)
        return _onednn_conv1x1(x, weight)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = _onednn_conv1x1(grad, weight.transpose(0, 1).contiguous())
        if ctx.needs_input_grad[1]:
            g = grad.view(grad.shape[0], grad.shape[1], -1)
            xs = x.view(x.shape[0], x.shape[1], -1)
            grad_w = torch.mm(g[0], xs[0].t())
            for b in range(1, g.shape[0]):
                grad_w.addmm_(g[b], xs[b].t())
            grad_w = grad_w.view_as(weight)
        return grad_x, grad_w


def _has_hooks(conv: nn.Conv2d) -> bool:
    from torch.nn.modules import module as module_globals

    return bool(conv._forward_hooks or conv._forward_pre_hooks
                or module_globals._global_forward_hooks or module_globals._global_forward_pre_hooks)


def _applies(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    # first: dynamo refuses to trace torch.backends.mkldnn.is_available (a graph break under fullgraph=True)
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export():
        return False
    if _has_hooks(conv):  # the fast path bypasses conv.forward: hooks (FLOP counting, users' own) must still fire
        return False
    return (
        x.device.type == "cpu" and x.dtype == torch.float32 and conv.weight.dtype == torch.float32
        and x.dim() == 4 and x.numel() > 0
        and _is_plain_1x1(conv) and conv.stride == (1, 1) and conv.dilation == (1, 1)
        and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
        and not torch.is_autocast_enabled("cpu")
    )


def conv1x1(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a 1×1 conv (B, C, H, W) -> (B, O, H', W'); while compiling, as a matmul (module docstring)."""
    if not torch.compiler.is_compiling() or _has_hooks(conv) or not _is_plain_1x1(conv):
        return conv(x)
    if conv.stride != (1, 1):
        x = x[:, :, :: conv.stride[0], :: conv.stride[1]]
    batch, channels, height, width = x.shape
    out = torch.matmul(conv.weight.view(conv.out_channels, channels), x.reshape(batch, channels, height * width))
    out = out.view(batch, conv.out_channels, height, width)
    return out if conv.bias is None else out + conv.bias.view(1, -1, 1, 1)


def _is_plain_1x1(conv: nn.Conv2d) -> bool:
    return (conv.kernel_size == (1, 1) and conv.padding in ((0, 0), "valid") and conv.groups == 1
            and conv.padding_mode == "zeros")


def project(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a 1×1 conv; through oneDNN on float32 CPU tensors in eager mode, a matmul while compiling."""
    if not _applies(conv, x):
        return conv1x1(conv, x)
    x = x.contiguous()
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in conv.parameters()))
    if not needs_grad:
        return _onednn_conv1x1(x, conv.weight, conv.bias)
    out = _OneDnnProjection.apply(x, conv.weight)
    return out if conv.bias is None else out + conv.bias.view(1, -1, 1, 1)
