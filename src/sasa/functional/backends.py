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

BACKENDS = [
    Backend("reference", local_attention2d_reference, lambda q, k, v, kernel_size, rel_pos: None, 100,
            "unfold + masked softmax; memory O(H·W·k²·D); the oracle"),
    Backend("chunked", chunked.local_attention2d_chunked, chunked.why_not, 50,
            "reference arithmetic in row bands, recomputed per band in backward; bounded peak memory"),
    Backend("cpu_fused", cpu_fused.local_attention2d_cpu_fused, cpu_fused.why_not, 10,
            "fused C++/OpenMP kernel (forward + recomputing backward), JIT-built on first use"),
    Backend("flex", flex.local_attention2d_flex, flex.flex_why_not, 5,
            "FlexAttention over H·W with a window block mask and q·r in score_mod (CUDA)"),
]
if flex.natten_available():
    BACKENDS.append(
        Backend("natten", flex.local_attention2d_natten, flex.natten_why_not, 6,
                "NATTEN na2d on the r-padded image with a masking channel (CUDA, rel_pos=None)")
    )

for backend in BACKENDS:
    register_backend(backend)
