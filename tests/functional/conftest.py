import pytest
import torch


def _attention_inputs(case, dtype):
    """(q, k, v, rel_pos) requiring grad, and k, for a case (B, N, H, W, D, Dv, kernel, rel_pos "head"|"shared"|None)."""
    b, n, h, w, d, dv, ks, mode = case
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(b, n, h, w, d, generator=g, dtype=dtype) for _ in range(2))
    v = torch.randn(b, n, h, w, dv, generator=g, dtype=dtype)
    rel = {"head": torch.randn(n, ks, ks, d, generator=g, dtype=dtype),
           "shared": torch.randn(ks, ks, d, generator=g, dtype=dtype), None: None}[mode]
    return [t.requires_grad_() if t is not None else None for t in (q, k, v, rel)], ks


@pytest.fixture
def attention_inputs():
    return _attention_inputs
