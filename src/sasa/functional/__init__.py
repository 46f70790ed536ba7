"""The local self-attention op: one public function, several exact backends."""
from __future__ import annotations

import torch

from sasa.functional import backends as _backends  # noqa: F401  (registers the backends)
from sasa.functional._checks import check_local_attention_args
from sasa.functional.dispatch import available_backends, explain_backend, select_backend
from sasa.functional.packed import local_attention2d_packed
from sasa.functional.reference import local_attention2d_reference

__all__ = [
    "local_attention2d", "local_attention2d_packed", "local_attention2d_reference", "available_backends", "explain_backend",
]


def local_attention2d(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    kernel_size: int,
    rel_pos: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Masked local attention over a centred kernel_size × kernel_size window (SPEC §1).

    q, k: (B, N, H, W, D); v: (B, N, H, W, Dv); rel_pos: None, (k, k, D) or (N, k, k, D).
    Returns (B, N, H, W, Dv). Logit = q·(k + rel_pos); no implicit scaling; neighbours
    outside the image are excluded from the softmax.
    """
    check_local_attention_args(q, k, v, kernel_size, rel_pos)
    chosen = select_backend(q, k, v, kernel_size=kernel_size, rel_pos=rel_pos, backend=backend)
    return chosen.run(q, k, v, kernel_size=kernel_size, rel_pos=rel_pos)
