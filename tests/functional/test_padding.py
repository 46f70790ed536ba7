"""``padding="zeros"``: every backend (and the packed entry) against an independent zero-padded computation."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

import sasa.functional as SF


def zero_padded_attention(q, k, v, kernel_size, rel_pos):
    """Shift-based zero padding, written independently of the op: out-of-image neighbours have k = v = 0
    and still take part in the softmax with the logit q·r."""
    b, n, h, w, d = q.shape
    r = kernel_size // 2
    kp, vp = (F.pad(t, (0, 0, r, r, r, r)) for t in (k, v))
    if rel_pos is not None and rel_pos.dim() == 3:
        rel_pos = rel_pos.expand(n, -1, -1, -1)
    logits, values = [], []
    for dy in range(kernel_size):
        for dx in range(kernel_size):
            key = kp[:, :, dy:dy + h, dx:dx + w]
            if rel_pos is not None:
                key = key + rel_pos[None, :, None, None, dy, dx]
            logits.append((q * key).sum(-1))
            values.append(vp[:, :, dy:dy + h, dx:dx + w])
    probs = torch.stack(logits, -1).softmax(-1)
    return torch.einsum("bnhwj,jbnhwd->bnhwd", probs, torch.stack(values))


CASES = [(2, 2, 5, 7, 4, 6, 3, "head"), (1, 1, 1, 1, 3, 2, 5, "shared"), (1, 2, 9, 4, 8, 8, 7, None)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("backend", SF.available_backends())
def test_zeros_padding_equals_zero_padded_computation(backend, case, dtype, attention_inputs):
    (q, k, v, rel), ks = attention_inputs(case, dtype)
    tol = dict(atol=1e-10, rtol=1e-9) if dtype == torch.float64 else dict(atol=1e-4, rtol=1e-4)
    out = SF.local_attention2d(q, k, v, kernel_size=ks, rel_pos=rel, backend=backend, padding="zeros")
    expected = zero_padded_attention(q, k, v, ks, rel)
    torch.testing.assert_close(out, expected, **tol)
    grad = torch.randn_like(out)
    inputs = [t for t in (q, k, v, rel) if t is not None]
    got = torch.autograd.grad(out, inputs, grad)
    want = torch.autograd.grad(expected, inputs, grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **tol)


def test_zeros_padding_differs_from_masking_at_borders_only(attention_inputs):
    (q, k, v, rel), ks = attention_inputs((1, 2, 9, 9, 4, 4, 3, "head"), torch.float64)
    masked = SF.local_attention2d(q, k, v, kernel_size=ks, rel_pos=rel)
    zeros = SF.local_attention2d(q, k, v, kernel_size=ks, rel_pos=rel, padding="zeros")
    torch.testing.assert_close(masked[:, :, 1:-1, 1:-1], zeros[:, :, 1:-1, 1:-1])
    assert not torch.allclose(masked[:, :, 0], zeros[:, :, 0])


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_packed_entry_zeros_padding(backend, attention_inputs):
    (q, k, v, rel), ks = attention_inputs((2, 2, 6, 5, 4, 4, 5, "head"), torch.float64)
    scale = 0.5
    qkv = torch.cat([rearrange(t, "b n h w d -> b (n d) h w") for t in (q, k, v)], dim=1).detach().requires_grad_()
    out = SF.local_attention2d_packed(qkv, num_heads=2, kernel_size=ks, rel_pos=rel, scale=scale,
                                      backend=backend, padding="zeros")
    qs, ks_, vs = (rearrange(t, "b (n d) h w -> b n h w d", n=2) for t in qkv.chunk(3, dim=1))
    expected = rearrange(zero_padded_attention(qs * scale, ks_, vs, ks, rel), "b n h w d -> b (n d) h w")
    torch.testing.assert_close(out, expected)
    grad = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, qkv, grad)[0], torch.autograd.grad(expected, qkv, grad)[0])


def test_bad_padding_is_named(attention_inputs):
    (q, k, v, rel), ks = attention_inputs(CASES[0], torch.float32)
    with pytest.raises(ValueError, match="padding must be one of .*'reflect'"):
        SF.local_attention2d(q, k, v, kernel_size=ks, padding="reflect")
