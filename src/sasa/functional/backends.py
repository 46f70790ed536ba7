"""Registration of every backend of the op. Each backend lives in its own module."""
from __future__ import annotations

from sasa.functional.dispatch import Backend, register_backend
from sasa.functional.reference import local_attention2d_reference

register_backend(
    Backend(
        name="reference",
        run=local_attention2d_reference,
        why_not=lambda q, k, v, kernel_size, rel_pos: None,
        priority=100,
        description="unfold + masked softmax; memory O(H·W·k²·D); the oracle",
    )
)
