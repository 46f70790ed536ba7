"""The local self-attention op: one public function, several exact backends (contract: docs/op.md)."""
from __future__ import annotations

import torch

from sasa.functional import backends as _backends  # noqa: F401  (registers the backends)
import torch.nn.functional as F

from sasa.functional._amp import autocast_dtype, cast_to
from sasa.functional._checks import (
    SUPPORTED_DTYPES, check_local_attention_args, check_padding, empty_output, per_head_rel_pos,
)
from sasa.functional.dispatch import (
    available_backends, backend_status, check_backend_name, explain_backend, registered_backends, select_backend,
)
from sasa.functional.packed import local_attention2d_packed
from sasa.functional.reference import local_attention2d_reference

__all__ = [
    "SUPPORTED_DTYPES", "available_backends", "backend_status", "explain_backend", "local_attention2d",
    "local_attention2d_packed", "local_attention2d_reference", "registered_backends",
]


def local_attention2d(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    kernel_size: int,
    rel_pos: torch.Tensor | None = None,
    backend: str = "auto",
    padding: str = "mask",
) -> torch.Tensor:
    """Masked local attention over a centred kernel_size × kernel_size window (docs/op.md).

    q, k: (B, N, H, W, D); v: (B, N, H, W, Dv); rel_pos: None, (k, k, D) or (N, k, k, D).
    Returns (B, N, H, W, Dv). Logit = q·(k + rel_pos); no implicit scaling. ``padding="mask"``:
    neighbours outside the image are excluded from the softmax; ``"zeros"``: they take part with
    zero key and value (logit q·r), as unfold-based ports compute it. B, H or W may be 0 (empty output).
    """
    amp = autocast_dtype(q.device) if isinstance(q, torch.Tensor) else None
    if amp is not None:
        q, k, v, rel_pos = cast_to(amp, q, k, v, rel_pos)
        with torch.autocast(q.device.type, enabled=False):
            return local_attention2d(q, k, v, kernel_size=kernel_size, rel_pos=rel_pos, backend=backend, padding=padding)
    check_local_attention_args(q, k, v, kernel_size, rel_pos)
    kernel_size = int(kernel_size)
    if check_padding(padding) == "zeros":
        # every window of an image zero-padded by r lies inside it, so the masked op on the padded
        # image is exactly zero padding; the crop keeps the original pixels' outputs
        r = kernel_size // 2
        q, k, v = (F.pad(t, (0, 0, r, r, r, r)) for t in (q, k, v))
        out = local_attention2d(q, k, v, kernel_size=kernel_size, rel_pos=rel_pos, backend=backend)
        return out[:, :, r:out.shape[2] - r, r:out.shape[3] - r]
    rel_pos = per_head_rel_pos(rel_pos, q.shape[1])
    if q.numel() == 0:  # empty batch or image: nothing to attend
        check_backend_name(backend)
        return empty_output(v, q, k, rel_pos)
    chosen = select_backend(q, k, v, kernel_size=kernel_size, rel_pos=rel_pos, backend=backend)
    return chosen.run(q, k, v, kernel_size=kernel_size, rel_pos=rel_pos)
