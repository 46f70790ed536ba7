"""Registration of every backend of the op. Each backend lives in its own module.

Priorities (lower runs first under ``backend="auto"``):
  5  flex       FlexAttention with a window block mask (CUDA)
  6  natten     NATTEN, content-only logits (CUDA; registered only if natten imports)
  10 cpu_fused  fused C++/OpenMP kernel, forward and backward (CPU; JIT-built on first use)
  50 chunked    pure PyTorch, row bands recomputed in backward (anywhere; memory-lean fallback)
  100 reference unfold + masked softmax (the oracle)
"""
from __future__ import annotations

from sasa.functional import chunked, cpu_fused, flex
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

register_backend(
    Backend(
        name="chunked",
        run=chunked.local_attention2d_chunked,
        why_not=chunked.why_not,
        priority=50,
        description="reference arithmetic in row bands, recomputed per band in backward; bounded peak memory",
    )
)

register_backend(
    Backend(
        name="cpu_fused",
        run=cpu_fused.local_attention2d_cpu_fused,
        why_not=cpu_fused.why_not,
        priority=10,
        description="fused C++/OpenMP kernel (forward + recomputing backward), JIT-built on first use",
    )
)

register_backend(
    Backend(
        name="flex",
        run=flex.local_attention2d_flex,
        why_not=flex.flex_why_not,
        priority=5,
        description="FlexAttention over H·W with a window block mask and q·r in score_mod (CUDA)",
    )
)

if flex.natten_available():
    register_backend(
        Backend(
            name="natten",
            run=flex.local_attention2d_natten,
            why_not=flex.natten_why_not,
            priority=6,
            description="NATTEN na2d on the r-padded image with a masking channel (CUDA, rel_pos=None)",
        )
    )
