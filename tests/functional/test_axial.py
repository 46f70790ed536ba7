"""Axial attention op: the reference against per-position loops, the matmul backend against the reference."""
import math

import pytest
import torch

from sasa.functional.axial import axial_attention1d, axial_attention1d_macs, axial_attention1d_reference


def brute_force(q, k, v, rel_q, rel_k, rel_v):
    """Loops straight from SPEC §8: keys within the radius and inside the axis, offset p − o."""
    batch, heads, length, _ = q.shape
    radius = rel_q.shape[0] // 2
    out = torch.zeros(batch, heads, length, v.shape[-1], dtype=q.dtype)
    for b in range(batch):
        for n in range(heads):
            for o in range(length):
                keys = [p for p in range(length) if abs(p - o) <= radius]
                logits = [
                    float(q[b, n, o] @ k[b, n, p] + q[b, n, o] @ rel_q[p - o + radius] + k[b, n, p] @ rel_k[p - o + radius])
                    for p in keys
                ]
                top = max(logits)
                weights = [math.exp(x - top) for x in logits]
                total = sum(weights)
                out[b, n, o] = sum(w / total * (v[b, n, p] + rel_v[p - o + radius]) for w, p in zip(weights, keys))
    return out


def make(batch, heads, length, dim, value_dim, radius, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=dtype)  # noqa: E731
    q, k, v = rand(batch, heads, length, dim), rand(batch, heads, length, dim), rand(batch, heads, length, value_dim)
    rows = 2 * radius + 1
    return q, k, v, dict(rel_q=rand(rows, dim), rel_k=rand(rows, dim), rel_v=rand(rows, value_dim))


CASES = [
    # (B, N, L, Dq, Dv, radius)
    (2, 2, 7, 3, 4, 6),  # global: radius = L − 1
    (1, 3, 9, 2, 2, 2),  # local span 5, borders on both sides
    (2, 1, 5, 4, 3, 9),  # tables longer than the axis
    (1, 2, 1, 3, 3, 3),  # one position: attends to itself
    (1, 1, 6, 2, 5, 0),  # span 1
    (3, 2, 8, 1, 2, 1),  # odd width, batch > heads
]


@pytest.mark.parametrize("batch,heads,length,dim,value_dim,radius", CASES)
def test_reference_matches_brute_force(batch, heads, length, dim, value_dim, radius):
    q, k, v, rel = make(batch, heads, length, dim, value_dim, radius)
    torch.testing.assert_close(axial_attention1d_reference(q, k, v, **rel), brute_force(q, k, v, **rel))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("batch,heads,length,dim,value_dim,radius", CASES)
def test_matmul_matches_reference_values_and_gradients(batch, heads, length, dim, value_dim, radius, dtype, tol):
    q, k, v, rel = make(batch, heads, length, dim, value_dim, radius, dtype=dtype)
    inputs = [q, k, v, *rel.values()]
    grads = {}
    for backend in ("reference", "matmul"):
        leaves = [t.clone().requires_grad_() for t in inputs]
        out = axial_attention1d(*leaves[:3], rel_q=leaves[3], rel_k=leaves[4], rel_v=leaves[5], backend=backend)
        (out * torch.linspace(-1, 1, out.numel(), dtype=dtype).view_as(out)).sum().backward()
        grads[backend] = (out.detach(), [t.grad for t in leaves])
    (ref_out, ref_grads), (fast_out, fast_grads) = grads["reference"], grads["matmul"]
    torch.testing.assert_close(fast_out, ref_out, atol=tol, rtol=tol)
    for name, fast, ref in zip(("q", "k", "v", "rel_q", "rel_k", "rel_v"), fast_grads, ref_grads):
        torch.testing.assert_close(fast, ref, atol=tol, rtol=tol, msg=name)


@pytest.mark.parametrize("radius", [2, 5])
def test_hooks_see_the_same_parts_in_both_backends(radius):
    """Logit hooks get three terms in the backend's layout with its mask of real in-radius keys (None: all are);
    output hooks get two (B, N, L, Dv) parts. Both layouts hold the same multiset of valid logits."""
    q, k, v, rel = make(2, 2, 6, 3, 4, radius)
    seen = {"terms": {}, "parts": []}

    def hooks(backend):
        def logit_norm(terms, valid):
            seen["terms"][backend] = (terms, valid)
            return [t * scale for t, scale in zip(terms, (1.0, -2.0, 0.5))]

        def output_norm(parts):
            seen["parts"].append([p.shape for p in parts])
            return [parts[0] * 3.0, parts[1] * -1.0]

        return dict(logit_norm=logit_norm, output_norm=output_norm)

    outs = [axial_attention1d(q, k, v, **rel, **hooks(b), backend=b) for b in ("reference", "matmul")]
    torch.testing.assert_close(outs[0], outs[1])
    assert seen["parts"] == [[(2, 2, 6, 4)] * 2] * 2
    ref_terms, ref_valid = seen["terms"]["reference"]
    fast_terms, fast_valid = seen["terms"]["matmul"]
    offsets = torch.arange(6)[None, :] - torch.arange(6)[:, None]
    if radius >= 5:
        assert ref_valid is None and fast_valid is None
    else:
        assert torch.equal(ref_valid, offsets.abs() <= radius)
        assert fast_valid.shape == (6, 2 * radius + 1) and fast_terms[0].shape == (2, 2, 6, 2 * radius + 1)
    for ref, fast in zip(ref_terms, fast_terms):
        pick = lambda t, valid: t.flatten(-2) if valid is None else t[..., valid]  # noqa: E731
        torch.testing.assert_close(pick(fast, fast_valid).sort(-1).values, pick(ref, ref_valid).sort(-1).values)
    # scaling the terms really changes the result (the hooks are applied, not ignored)
    assert not torch.allclose(outs[0], axial_attention1d(q, k, v, **rel))


@pytest.mark.parametrize("radius", [2, 4])  # banded (local) and (L, L) global layouts
def test_gradcheck_matmul_float64(radius):
    q, k, v, rel = make(1, 2, 5, 2, 3, radius)
    leaves = [t.requires_grad_() for t in (q, k, v, *rel.values())]
    fn = lambda q, k, v, rq, rk, rv: axial_attention1d(q, k, v, rel_q=rq, rel_k=rk, rel_v=rv, backend="matmul")  # noqa: E731
    assert torch.autograd.gradcheck(fn, leaves)


def test_relative_embeddings_give_translation_equivariance():
    """Without content (k = 0, v = 0) the output at o depends only on offsets: interior positions agree."""
    q, _, _, rel = make(1, 1, 11, 3, 2, 2)
    q = q[:, :, :1].expand(1, 1, 11, 3).contiguous()
    out = axial_attention1d(q, torch.zeros_like(q), torch.zeros(1, 1, 11, 2, dtype=q.dtype), **rel)
    torch.testing.assert_close(out[0, 0, 2:-2], out[0, 0, 2:3].expand(7, 2))
    assert not torch.allclose(out[0, 0, 0], out[0, 0, 5])  # the border sees fewer keys


@pytest.mark.parametrize("change,match", [
    (dict(k=torch.randn(1, 2, 4, 3)), "k must have the shape of q"),
    (dict(v=torch.randn(1, 2, 4, 3)), r"v must be \(B, N, L, Dv\)"),
    (dict(rel_q=torch.randn(4, 2)), "odd number of rows"),
    (dict(rel_k=torch.randn(5, 3)), r"rel_k must have shape \(5, 2\)"),
    (dict(rel_v=torch.randn(3, 3)), r"rel_v must have shape \(5, 3\)"),
    (dict(q=torch.randn(1, 2, 5)), "q must have 4 dimensions"),
])
def test_argument_errors_name_the_value(change, match):
    args = dict(q=torch.randn(1, 2, 5, 2), k=torch.randn(1, 2, 5, 2), v=torch.randn(1, 2, 5, 3),
                rel_q=torch.randn(5, 2), rel_k=torch.randn(5, 2), rel_v=torch.randn(5, 3))
    args.update(change)
    with pytest.raises(ValueError, match=match):
        axial_attention1d(**args)


def test_dtype_and_backend_errors():
    args = dict(q=torch.randn(1, 1, 3, 2), k=torch.randn(1, 1, 3, 2), v=torch.randn(1, 1, 3, 2),
                rel_q=torch.randn(3, 2), rel_k=torch.randn(3, 2), rel_v=torch.randn(3, 2))
    with pytest.raises(TypeError, match="rel_v must have the dtype"):
        axial_attention1d(**{**args, "rel_v": args["rel_v"].double()})
    with pytest.raises(ValueError, match="backend must be 'auto' or one of .*'nonesuch'"):
        axial_attention1d(**args, backend="nonesuch")


def test_macs_count_the_span_in_full():
    # 2 lines × 2 heads × 6 queries × 5 keys × (3·Dq + 2·Dv)
    assert axial_attention1d_macs(batch=2, heads=2, length=6, radius=2, dim=4, value_dim=8) == 2 * 2 * 6 * 5 * (12 + 16)
    assert axial_attention1d_macs(batch=1, heads=1, length=6, radius=55, dim=1, value_dim=1) == 6 * 6 * 5
