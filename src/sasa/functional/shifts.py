"""The op as k² shifted slices: plain tensor ops that export to standard ONNX (contract: docs/op.md).

For each of the k² window offsets (dy, dx), the keys and values of that neighbour of every pixel are
one slice of the zero-padded k and v, so the logit of the offset is a product and a sum over D, and
the output is a sum of k² weighted slices. Nothing k²-fold is built but the (B, N, H, W, k²) logits
(the unfold oracle builds (B, N, H, W, k², D) windows of keys and values). Every size is read from the
tensors, so a traced graph works at any H and W. Used by :mod:`sasa.export` for ONNX.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sasa.functional._checks import check_local_attention_args, check_padding, per_head_rel_pos
from sasa.functional.reference import upcast_half


def local_attention2d_shifts(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    kernel_size: int,
    rel_pos: torch.Tensor | None = None,
    padding: str = "mask",
) -> torch.Tensor:
    """q, k: (B, N, H, W, D); v: (B, N, H, W, Dv); rel_pos: None, (k, k, D) or (N, k, k, D) -> (B, N, H, W, Dv).

    Same value as :func:`sasa.functional.local_attention2d` (logit q·(k + r), no implicit scaling;
    ``padding="mask"`` drops out-of-image neighbours from the softmax, ``"zeros"`` keeps them with zero
    key and value). Half-precision inputs are computed in float32, as the reference does.
    """
    check_local_attention_args(q, k, v, kernel_size, rel_pos)
    mask = check_padding(padding) == "mask"
    kernel_size = int(kernel_size)
    dtype = q.dtype
    q, k, v, rel_pos = upcast_half(q, k, v, per_head_rel_pos(rel_pos, q.shape[1]))
    r = kernel_size // 2
    height, width = q.shape[2], q.shape[3]
    k_pad, v_pad = (F.pad(t, (0, 0, r, r, r, r)) for t in (k, v))  # (B, N, H + 2r, W + 2r, D)
    offsets = [(dy, dx) for dy in range(kernel_size) for dx in range(kernel_size)]  # row-major, as rel_pos.flatten
    logits = torch.stack(
        [(q * k_pad[:, :, dy:dy + height, dx:dx + width]).sum(-1) for dy, dx in offsets], dim=-1
    )  # (B, N, H, W, k²)
    if rel_pos is not None:
        logits = logits + torch.einsum("bnhwd,nod->bnhwo", q, rel_pos.flatten(1, 2))
    if mask:
        # 1 inside the image, 0 in the padding: the same slices give each offset's in-image flags
        inside = F.pad(torch.ones_like(q[:1, :1, :, :, 0]), (r, r, r, r))  # (1, 1, H + 2r, W + 2r)
        outside = torch.stack([inside[:, :, dy:dy + height, dx:dx + width] for dy, dx in offsets], dim=-1) == 0
        logits = logits.masked_fill(outside, float("-inf"))  # the centre is always inside: no empty softmax
    weights = logits.softmax(dim=-1)
    out = None
    for index, (dy, dx) in enumerate(offsets):
        term = weights[..., index:index + 1] * v_pad[:, :, dy:dy + height, dx:dx + width]
        out = term if out is None else out + term
    return out.to(dtype)
