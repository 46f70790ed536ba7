"""Registration of every backend of the op. Each backend lives in its own module and names its
predicate ``why_not(q, k, v, kernel_size, rel_pos)`` (the reason it cannot run these inputs, or None).

Priorities (lower runs first under ``backend="auto"``):
  5  flex       FlexAttention with a window block mask (CUDA)
  6  natten     NATTEN, content-only logits (CUDA; registered only if natten imports)
  10 cpu_fused  fused C++/OpenMP kernel, forward and backward (CPU; JIT-built on first use)
  50 chunked    pure PyTorch, row bands recomputed in backward (anywhere; memory-lean fallback)
  100 reference unfold + masked softmax (the oracle)
"""
from __future__ import annotations

from sasa.functional import chunked, cpu_fused, flex, natten, reference
from sasa.functional.dispatch import Backend, register_backend

ANY_DEVICE = ("cpu", "cuda")

BACKENDS = [
    Backend("reference", reference.local_attention2d_reference, reference.why_not, 100, ANY_DEVICE),
    Backend("chunked", chunked.local_attention2d_chunked, chunked.why_not, 50, ANY_DEVICE),
    Backend("cpu_fused", cpu_fused.local_attention2d_cpu_fused, cpu_fused.why_not, 10, ("cpu",)),
    Backend("flex", flex.local_attention2d_flex, flex.why_not, 5, ("cuda",)),
]
if natten.available():
    BACKENDS.append(Backend("natten", natten.local_attention2d_natten, natten.why_not, 6, ("cuda",)))

for backend in BACKENDS:
    register_backend(backend)
