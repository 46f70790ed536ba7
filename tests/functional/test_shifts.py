"""The shift decomposition (the op as standard ONNX-exportable ops) against the unfold reference."""
from __future__ import annotations

import pytest
import torch

import sasa.functional as SF
from sasa.functional.shifts import local_attention2d_shifts

# (B, N, H, W, D, Dv, kernel, rel_pos): odd sizes, a 1×1 image, a window wider than the image, Dv != D
CASES = [(2, 2, 5, 7, 4, 6, 3, "head"), (1, 1, 1, 1, 3, 2, 5, "shared"), (1, 2, 9, 4, 8, 8, 7, None),
         (3, 1, 3, 2, 2, 3, 9, "head")]


@pytest.mark.parametrize("padding", ["mask", "zeros"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_shifts_equal_reference(case, dtype, padding, attention_inputs):
    (q, k, v, rel), ks = attention_inputs(case, dtype)
    tol = dict(atol=1e-10, rtol=1e-9) if dtype == torch.float64 else dict(atol=1e-5, rtol=1e-5)
    got = local_attention2d_shifts(q, k, v, kernel_size=ks, rel_pos=rel, padding=padding)
    want = SF.local_attention2d(q, k, v, kernel_size=ks, rel_pos=rel, backend="reference", padding=padding)
    assert got.shape == want.shape and got.dtype == dtype
    torch.testing.assert_close(got, want, **tol)
    # differentiable as plain ops: same gradients as the oracle
    grad = torch.randn_like(want)
    inputs = [t for t in (q, k, v, rel) if t is not None]
    for a, b in zip(torch.autograd.grad(got, inputs, grad), torch.autograd.grad(want, inputs, grad)):
        torch.testing.assert_close(a, b, **tol)


def test_shifts_half_computed_in_float32(attention_inputs):
    (q, k, v, rel), ks = attention_inputs(CASES[0], torch.float32)
    half = [t.detach().bfloat16() for t in (q, k, v, rel)]
    got = local_attention2d_shifts(*half[:3], kernel_size=ks, rel_pos=half[3])
    want = SF.local_attention2d_reference(*half[:3], kernel_size=ks, rel_pos=half[3])
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, want)


def test_shifts_check_arguments(attention_inputs):
    (q, k, v, rel), _ = attention_inputs(CASES[0], torch.float32)
    with pytest.raises(ValueError, match="kernel_size"):
        local_attention2d_shifts(q, k, v, kernel_size=4)
    with pytest.raises(ValueError, match="padding"):
        local_attention2d_shifts(q, k, v, kernel_size=3, padding="reflect")
    with pytest.raises(ValueError, match="rel_pos"):
        local_attention2d_shifts(q, k, v, kernel_size=5, rel_pos=rel)
