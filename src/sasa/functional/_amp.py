"""Autocast for the op: under ``torch.autocast`` the op runs in the autocast dtype with autocast off inside.

The layer's projections come out of autocast in bfloat16/float16 while its relative embeddings are
float32 parameters; like autocast's matmuls, the op casts its float32/float16/bfloat16 inputs to the
autocast dtype (float64 is left alone, so a float64 mix still fails the dtype check). Every backend
then accumulates the logits and the softmax in float32 (docs/op.md).
"""
from __future__ import annotations

import torch

_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps")
_CASTABLE = (torch.float32, torch.float16, torch.bfloat16)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype active for ``device``'s type, or None when autocast is off there."""
    if device.type not in _AUTOCAST_DEVICES or not torch.is_autocast_enabled(device.type):
        return None
    return torch.get_autocast_dtype(device.type)


def cast_to(dtype: torch.dtype, *tensors):
    """Each float32/float16/bfloat16 tensor as ``dtype``; None and other dtypes unchanged."""
    return tuple(t.to(dtype) if isinstance(t, torch.Tensor) and t.dtype in _CASTABLE else t for t in tensors)
