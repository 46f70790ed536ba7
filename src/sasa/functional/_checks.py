"""Argument validation for :func:`sasa.functional.local_attention2d`, in one place.

Every error names the argument, the value received and what was expected.
"""
from __future__ import annotations

import operator

import torch

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
PADDING_MODES = ("mask", "zeros")


def check_padding(padding: object) -> str:
    """``"mask"``: out-of-image neighbours leave the softmax; ``"zeros"``: they take part with k = v = 0."""
    if padding not in PADDING_MODES:
        raise ValueError(f"padding must be one of {PADDING_MODES}, got {padding!r}")
    return padding


def _check_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() != 5 and name in ("q", "k", "v"):
        raise ValueError(
            f"{name} must have 5 dimensions (B, N, H, W, D), got {value.dim()} with shape {tuple(value.shape)}"
        )
    if value.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} must be a floating tensor ({', '.join(map(str, SUPPORTED_DTYPES))}), got {value.dtype}")
    return value


def check_integer(name: str, value: object) -> int:
    """``value`` as a Python int if it is integral (int, numpy integer, 0-d integer tensor), else raise."""
    if not isinstance(value, bool):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise TypeError(f"{name} must be an integer, got {type(value).__name__} ({value!r})")


def check_kernel_size(kernel_size: object) -> int:
    """``kernel_size`` as a Python int if it is a positive odd integer, else raise."""
    kernel_size = check_integer("kernel_size", kernel_size)
    if kernel_size <= 0 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    return kernel_size


def check_local_attention_args(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: int,
    rel_pos: torch.Tensor | None,
) -> None:
    """Validate shapes, dtypes and devices of the op's inputs (docs/op.md)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_tensor(name, t)
    check_kernel_size(kernel_size)
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q {tuple(q.shape)} (B, N, H, W, D), got {tuple(k.shape)}")
    if v.shape[:4] != q.shape[:4]:
        raise ValueError(
            f"v must match q in (B, N, H, W) = {tuple(q.shape[:4])}, got {tuple(v.shape[:4])} (full shape {tuple(v.shape)})"
        )
    if q.shape[1] == 0 or q.shape[-1] == 0 or v.shape[-1] == 0:  # B, H, W may be 0: the output is then empty
        raise ValueError(f"q and v must have at least one head and channel, got q {tuple(q.shape)} and v {tuple(v.shape)}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{name} must have the dtype of q ({q.dtype}), got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} must be on the device of q ({q.device}), got {t.device}")
    if rel_pos is None:
        return
    if not isinstance(rel_pos, torch.Tensor):
        raise TypeError(f"rel_pos must be None or a torch.Tensor, got {type(rel_pos).__name__}")
    _, heads, _, _, dim = q.shape
    shared = (kernel_size, kernel_size, dim)
    per_head = (heads, kernel_size, kernel_size, dim)
    if tuple(rel_pos.shape) not in (shared, per_head):
        raise ValueError(
            f"rel_pos must have shape {shared} (shared by all heads) or {per_head} (per head), "
            f"got {tuple(rel_pos.shape)}"
        )
    if rel_pos.dtype != q.dtype:
        raise TypeError(f"rel_pos must have the dtype of q ({q.dtype}), got {rel_pos.dtype}")
    if rel_pos.device != q.device:
        raise ValueError(f"rel_pos must be on the device of q ({q.device}), got {rel_pos.device}")


def per_head_rel_pos(rel_pos: torch.Tensor | None, num_heads: int) -> torch.Tensor | None:
    """A checked rel_pos in its per-head form (N, k, k, D): a shared (k, k, D) table is expanded (a view)."""
    if rel_pos is None or rel_pos.dim() == 4:
        return rel_pos
    return rel_pos.unsqueeze(0).expand(num_heads, -1, -1, -1)


def empty_output(like: torch.Tensor, *inputs: torch.Tensor | None) -> torch.Tensor:
    """Zeros shaped as the empty ``like``, still connected to every input that requires grad (zero gradients)."""
    out = like.new_zeros(like.shape)
    for t in (like, *inputs):
        if t is not None and t.requires_grad:
            out = out + t.sum() * 0
    return out
