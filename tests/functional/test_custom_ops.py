"""The fused CPU kernel as registered custom ops: opcheck, and torch.compile of every CPU backend."""
from __future__ import annotations

import pytest
import torch

import sasa.functional as SF
from sasa.functional import cpu_fused

CPU_BACKENDS = ("reference", "chunked", "cpu_fused")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles its own closure; without a reset they would share dynamo's recompile budget."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _require_extension():
    if cpu_fused.extension_error() is not None:
        pytest.skip(f"fused CPU extension unavailable: {cpu_fused.extension_error()}")


def _inputs(dtype=torch.float64, *, heads=2, rel_heads=1, dv=3, requires_grad=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shape = (2, heads, 5, 6, 4)
    q, k = (torch.randn(*shape, generator=gen, dtype=dtype) for _ in range(2))
    v = torch.randn(*shape[:4], dv, generator=gen, dtype=dtype)
    rel = torch.randn(rel_heads, 3, 3, 4, generator=gen, dtype=dtype)
    return [t.requires_grad_(requires_grad) for t in (q, k, v, rel)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rel_heads", [1, 2])
def test_opcheck_forward(dtype, rel_heads):
    _require_extension()
    q, k, v, rel = _inputs(dtype, rel_heads=rel_heads)
    torch.library.opcheck(cpu_fused.fused_forward, (q, k, v, rel, 3, True))
    torch.library.opcheck(cpu_fused.fused_forward, (q.detach(), k.detach(), v.detach(), rel.detach(), 3, False))


@pytest.mark.parametrize("need_drel", [True, False])
def test_opcheck_backward(need_drel):
    _require_extension()
    q, k, v, rel = _inputs(requires_grad=False)
    out, lse = cpu_fused.fused_forward(q, k, v, rel, 3, True)
    grad_out = torch.randn_like(out)
    torch.library.opcheck(cpu_fused.fused_backward, (grad_out, q, k, v, rel, out, lse, 3, need_drel))


def _packed(requires_grad=True):
    q, k, v, rel = _inputs(dv=4, rel_heads=2, requires_grad=False)
    qkv = torch.cat([t.permute(0, 1, 4, 2, 3).flatten(1, 2) for t in (q, k, v)], dim=1)  # (B, 3·N·D, H, W)
    return qkv.requires_grad_(requires_grad), rel.requires_grad_(requires_grad)


def test_opcheck_packed():
    _require_extension()
    qkv, rel = _packed()
    torch.library.opcheck(cpu_fused.fused_forward_packed, (qkv, rel, 3, 2, 0.5, True))
    out, lse = cpu_fused.fused_forward_packed(qkv.detach(), rel.detach(), 3, 2, 0.5, True)
    args = (torch.randn_like(out), qkv.detach(), rel.detach(), out, lse, 3, 2, 0.5, True)
    torch.library.opcheck(cpu_fused.fused_backward_packed, args)


def test_forward_without_lse_refuses_backward():
    _require_extension()
    q, k, v, rel = _inputs()
    out, _ = cpu_fused.fused_forward(q, k, v, rel, 3, False)
    with pytest.raises(RuntimeError, match="need_lse=False"):
        out.sum().backward()


def _values_and_grads(fn, q, k, v, rel):
    """fn's output and the gradients of (q, k, v, rel) for a output-dependent upstream gradient."""
    out = fn(q, k, v, rel)
    grads = torch.autograd.grad(out, (q, k, v, rel), torch.ones_like(out) + out.detach(), allow_unused=True)
    return out, grads


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("rel_shape", ["shared", "per_head", None])
def test_compiled_backend_matches_eager(backend, rel_shape):
    """fullgraph (no graph break), dynamic shapes, fake impls and autograd through AOTAutograd."""
    if backend == "cpu_fused":
        _require_extension()

    def attend(q, k, v, rel):
        rel_pos = None if rel_shape is None else (rel[0] if rel_shape == "shared" else rel)
        return SF.local_attention2d(q, k, v, kernel_size=3, rel_pos=rel_pos, backend=backend)

    q, k, v, rel = _inputs(rel_heads=2)
    eager = _values_and_grads(attend, q, k, v, rel)
    compiled = _values_and_grads(torch.compile(attend, fullgraph=True, dynamic=True, backend="aot_eager"), q, k, v, rel)
    torch.testing.assert_close(compiled[0], eager[0])
    for got, want in zip(compiled[1], eager[1]):
        torch.testing.assert_close(got, want)  # (both None for rel when rel_pos is None)


def test_compiled_packed_matches_eager():
    _require_extension()

    def attend(qkv, rel):
        return SF.local_attention2d_packed(qkv, num_heads=2, kernel_size=3, rel_pos=rel, scale=0.5)

    qkv, rel = _packed()
    results = []
    for fn in (attend, torch.compile(attend, fullgraph=True, dynamic=True, backend="aot_eager")):
        out = fn(qkv, rel)
        results.append((out, *torch.autograd.grad(out, (qkv, rel), torch.ones_like(out) + out.detach())))
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want)


def test_auto_dispatch_compiles_without_graph_break():
    _require_extension()
    q, k, v, rel = _inputs()

    def attend(q, k, v, rel):
        return SF.local_attention2d(q, k, v, kernel_size=3, rel_pos=rel)

    explanation = torch._dynamo.explain(attend)(q, k, v, rel[0])
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert "cpu_fused_forward" in str(explanation.graphs[0].code)
