"""The layout-native entry ``local_attention2d_packed`` and the forward-only kernels, against the reference."""
from __future__ import annotations

import pytest
import torch
from einops import rearrange

import sasa.functional as SF
from sasa.functional import cpu_fused
from sasa.functional.reference import local_attention2d_reference

# (B, N, H, W, D, kernel_size, rel_pos mode)
CASES = [
    (2, 3, 5, 7, 4, 3, "head"),  # odd sizes, generic D
    (1, 1, 1, 1, 3, 5, "shared"),  # 1x1 image, kernel > image
    (2, 2, 9, 4, 8, 7, None),  # kernel > width, no rel_pos, D=8 specialisation
    (1, 2, 13, 6, 16, 5, "shared"),  # D=16 specialisation
    (1, 1, 20, 9, 8, 3, "head"),  # one image: the backward splits rows into bands
    (3, 2, 4, 19, 8, 1, "head"),  # kernel 1
]
TOL = {torch.float64: dict(atol=1e-10, rtol=1e-9), torch.float32: dict(atol=1e-4, rtol=1e-4)}


def _require_ext():
    if cpu_fused.extension_error() is not None:
        pytest.skip(f"fused CPU extension unavailable: {cpu_fused.extension_error()}")


def _make(case, dtype):
    b, n, h, w, d, ks, rel = case
    gen = torch.Generator().manual_seed(0)
    qkv = torch.randn(b, 3 * n * d, h, w, generator=gen, dtype=torch.float64).to(dtype).requires_grad_(True)
    shape = {"shared": (ks, ks, d), "head": (n, ks, ks, d)}.get(rel)
    rel_pos = None if shape is None else torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype).requires_grad_(True)
    return qkv, rel_pos


def _reference(qkv, rel_pos, *, num_heads, kernel_size, scale):
    q, k, v = (rearrange(t, "b (n d) h w -> b n h w d", n=num_heads) for t in qkv.chunk(3, dim=1))
    out = local_attention2d_reference(q * scale, k, v, kernel_size=kernel_size, rel_pos=rel_pos)
    return rearrange(out, "b n h w d -> b (n d) h w")


@pytest.mark.parametrize("backend", ["auto", "cpu_fused", "chunked"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}N{}_{}x{}_D{}_k{}_{}".format(*c))
def test_packed_matches_reference(backend, dtype, case):
    if backend != "chunked":
        _require_ext()
    qkv, rel_pos = _make(case, dtype)
    n, ks, scale = case[1], case[5], case[4] ** -0.5
    inputs = [t for t in (qkv, rel_pos) if t is not None]
    expected = _reference(qkv, rel_pos, num_heads=n, kernel_size=ks, scale=scale)
    out = SF.local_attention2d_packed(qkv, num_heads=n, kernel_size=ks, rel_pos=rel_pos, scale=scale, backend=backend)
    assert out.shape == expected.shape and out.dtype == dtype
    assert out.is_contiguous() or backend == "chunked"  # the kernel writes the layer's layout
    torch.testing.assert_close(out, expected, **TOL[dtype])
    grad_out = torch.randn(expected.shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    got = torch.autograd.grad(out, inputs, grad_out)
    want = torch.autograd.grad(expected, inputs, grad_out)
    for name, g, w in zip(["dqkv", "drel_pos"], got, want):
        torch.testing.assert_close(g, w, **TOL[dtype], msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("case", [CASES[0], CASES[4]], ids=["generic", "bands"])
def test_packed_gradcheck_float64(case):
    _require_ext()
    b, n, h, w, d, ks, _ = case
    qkv, rel_pos = _make((1, n, min(h, 6), min(w, 5), d, ks, "head"), torch.float64)
    fn = lambda x, r: SF.local_attention2d_packed(x, num_heads=n, kernel_size=ks, rel_pos=r, scale=0.7)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (qkv, rel_pos))


@pytest.mark.parametrize("packed", [False, True], ids=["public", "packed"])
def test_forward_only_kernel_under_no_grad(packed):
    """Without autograd the forward-only kernel runs (no logsumexp) and gives the autograd path's values."""
    _require_ext()
    qkv, rel_pos = _make((2, 2, 7, 9, 8, 5, "head"), torch.float32)
    q, k, v = (rearrange(t, "b (n d) h w -> b n h w d", n=2).contiguous() for t in qkv.chunk(3, dim=1))

    def run():
        if packed:
            return SF.local_attention2d_packed(qkv, num_heads=2, kernel_size=5, rel_pos=rel_pos, backend="cpu_fused")
        return SF.local_attention2d(q, k, v, kernel_size=5, rel_pos=rel_pos, backend="cpu_fused")

    with_grad = run()
    assert with_grad.grad_fn is not None
    with torch.no_grad():
        forward_only = run()
    assert forward_only.grad_fn is None
    torch.testing.assert_close(forward_only, with_grad.detach(), rtol=0, atol=0)
    ext = cpu_fused.load_extension()
    out, lse = ext.forward(q.detach(), k.detach(), v.detach(), rel_pos.detach(), 5, False)
    assert lse.numel() == 0


def test_packed_bfloat16_computes_in_float32():
    _require_ext()
    qkv, rel_pos = _make((1, 2, 5, 6, 8, 3, "shared"), torch.float32)
    expected = _reference(qkv.detach(), rel_pos.detach(), num_heads=2, kernel_size=3, scale=0.5)
    out = SF.local_attention2d_packed(qkv.detach().bfloat16(), num_heads=2, kernel_size=3,
                                      rel_pos=rel_pos.detach().bfloat16(), scale=0.5)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, atol=0.05, rtol=0.05)


def test_packed_bad_arguments():
    qkv = torch.randn(1, 24, 5, 5)
    with pytest.raises(ValueError, match=r"qkv must have 3·num_heads·D channels \(num_heads=5\), got 24"):
        SF.local_attention2d_packed(qkv, num_heads=5, kernel_size=3)
    with pytest.raises(ValueError, match="qkv must have 4 dimensions"):
        SF.local_attention2d_packed(qkv[0], num_heads=2, kernel_size=3)
    with pytest.raises(ValueError, match="num_heads must be a positive int, got 0"):
        SF.local_attention2d_packed(qkv, num_heads=0, kernel_size=3)
    with pytest.raises(ValueError, match="kernel_size must be a positive odd integer, got 4"):
        SF.local_attention2d_packed(qkv, num_heads=2, kernel_size=4)
    with pytest.raises(ValueError, match=r"rel_pos must have shape \(3, 3, 4\)"):
        SF.local_attention2d_packed(qkv, num_heads=2, kernel_size=3, rel_pos=torch.randn(3, 3, 8))
    with pytest.raises(TypeError, match="scale must be a number"):
        SF.local_attention2d_packed(qkv, num_heads=2, kernel_size=3, scale="1")
