"""The reference op against an independent brute-force loop over pixels (SPEC §1)."""
import math

import pytest
import torch

from sasa.functional import local_attention2d


def brute_force(q, k, v, kernel_size, rel_pos):
    """Per-pixel loops, straight from the formula: softmax over in-image neighbours only."""
    batch, heads, height, width, _ = q.shape
    r = kernel_size // 2
    out = torch.zeros(*q.shape[:4], v.shape[-1], dtype=q.dtype)
    for b in range(batch):
        for n in range(heads):
            for i in range(height):
                for j in range(width):
                    logits, values = [], []
                    for a in range(i - r, i + r + 1):
                        for c in range(j - r, j + r + 1):
                            if not (0 <= a < height and 0 <= c < width):
                                continue
                            key = k[b, n, a, c]
                            if rel_pos is not None:
                                table = rel_pos[n] if rel_pos.dim() == 4 else rel_pos
                                key = key + table[a - i + r, c - j + r]
                            logits.append(float(q[b, n, i, j] @ key))
                            values.append(v[b, n, a, c])
                    top = max(logits)
                    weights = [math.exp(x - top) for x in logits]
                    total = sum(weights)
                    out[b, n, i, j] = sum(w / total * val for w, val in zip(weights, values))
    return out


CASES = [
    # (B, N, H, W, D, Dv, kernel, rel_pos kind)
    (2, 2, 5, 4, 3, 3, 3, "per_head"),
    (1, 3, 6, 7, 4, 2, 5, "shared"),
    (1, 1, 3, 3, 2, 2, 7, "per_head"),  # kernel larger than the image
    (2, 2, 1, 1, 3, 4, 3, "shared"),  # 1×1 image: attends to itself only
    (1, 2, 4, 5, 3, 3, 1, None),  # 1×1 kernel
    (1, 2, 5, 5, 3, 3, 5, None),
]


@pytest.mark.parametrize("batch,heads,height,width,dim,value_dim,kernel_size,rel", CASES)
def test_reference_matches_brute_force(batch, heads, height, width, dim, value_dim, kernel_size, rel):
    q = torch.randn(batch, heads, height, width, dim, dtype=torch.float64)
    k = torch.randn_like(q)
    v = torch.randn(batch, heads, height, width, value_dim, dtype=torch.float64)
    rel_pos = {
        None: None,
        "shared": torch.randn(kernel_size, kernel_size, dim, dtype=torch.float64),
        "per_head": torch.randn(heads, kernel_size, kernel_size, dim, dtype=torch.float64),
    }[rel]
    expected = brute_force(q, k, v, kernel_size, rel_pos)
    got = local_attention2d(q, k, v, kernel_size=kernel_size, rel_pos=rel_pos, backend="reference")
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_one_by_one_image_returns_its_value():
    q, k, v = (torch.randn(2, 3, 1, 1, 4) for _ in range(3))
    out = local_attention2d(q, k, v, kernel_size=7, rel_pos=torch.randn(7, 7, 4), backend="reference")
    torch.testing.assert_close(out, v)


def test_borders_are_masked_not_zero_padded():
    """A zero-padded key would still get the logit q·r; masking must give it no weight at all."""
    q = torch.ones(1, 1, 3, 3, 2)
    k = torch.zeros_like(q)
    v = torch.arange(9.0).view(1, 1, 3, 3, 1)
    rel_pos = torch.zeros(3, 3, 2)
    out = local_attention2d(q, k, v, kernel_size=3, rel_pos=rel_pos, backend="reference")
    # all logits equal -> corner (0, 0) averages its 4 in-image neighbours {0, 1, 3, 4}
    assert out[0, 0, 0, 0, 0].item() == pytest.approx(2.0)
    assert out[0, 0, 1, 1, 0].item() == pytest.approx(4.0)


@pytest.mark.parametrize("rel", ["shared", "per_head", None])
def test_reference_gradcheck_float64(rel):
    heads, kernel_size, dim = 2, 3, 3
    q = torch.randn(1, heads, 4, 3, dim, dtype=torch.float64, requires_grad=True)
    k = torch.randn_like(q, requires_grad=True)
    v = torch.randn(1, heads, 4, 3, 2, dtype=torch.float64, requires_grad=True)
    shape = {"shared": (kernel_size, kernel_size, dim), "per_head": (heads, kernel_size, kernel_size, dim)}
    inputs = [q, k, v]
    if rel is not None:
        inputs.append(torch.randn(*shape[rel], dtype=torch.float64, requires_grad=True))

    def fn(*tensors):
        rel_pos = tensors[3] if len(tensors) == 4 else None
        return local_attention2d(*tensors[:3], kernel_size=kernel_size, rel_pos=rel_pos, backend="reference")

    assert torch.autograd.gradcheck(fn, inputs)


def dense_masked_attention(q, k, v, kernel_size, rel_pos):
    """A second, independent formulation: full H·W × H·W attention with a window mask."""
    batch, heads, height, width, dim = q.shape
    r = kernel_size // 2
    rows = torch.arange(height).repeat_interleave(width)
    cols = torch.arange(width).repeat(height)
    d_row = rows[None, :] - rows[:, None]  # key row - query row
    d_col = cols[None, :] - cols[:, None]
    inside = (d_row.abs() <= r) & (d_col.abs() <= r)
    qf, kf, vf = (t.reshape(batch, heads, height * width, -1) for t in (q, k, v))
    logits = qf @ kf.transpose(-1, -2)
    if rel_pos is not None:
        table = rel_pos if rel_pos.dim() == 4 else rel_pos.expand(heads, -1, -1, -1)
        rel = table[:, (d_row + r).clamp(0, kernel_size - 1), (d_col + r).clamp(0, kernel_size - 1)]  # (N, L, L, D)
        logits = logits + torch.einsum("bnld,nlmd->bnlm", qf, rel)
    weights = logits.masked_fill(~inside, float("-inf")).softmax(-1)
    return (weights @ vf).reshape(batch, heads, height, width, -1)


@pytest.mark.parametrize("seed", range(6))
def test_reference_matches_dense_formulation_values_and_gradients(seed):
    gen = torch.Generator().manual_seed(seed)
    pick = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=gen))  # noqa: E731
    batch, heads, height, width = pick(1, 2), pick(1, 3), pick(1, 9), pick(1, 9)
    dim, value_dim, kernel_size = pick(1, 5), pick(1, 5), 2 * pick(0, 4) + 1
    rel_kind = seed % 3
    q = torch.randn(batch, heads, height, width, dim, dtype=torch.float64, generator=gen, requires_grad=True)
    k = torch.randn(q.shape, dtype=torch.float64, generator=gen, requires_grad=True)
    v = torch.randn(batch, heads, height, width, value_dim, dtype=torch.float64, generator=gen, requires_grad=True)
    rel_shape = [None, (kernel_size, kernel_size, dim), (heads, kernel_size, kernel_size, dim)][rel_kind]
    rel_pos = None if rel_shape is None else torch.randn(rel_shape, dtype=torch.float64, generator=gen, requires_grad=True)
    leaves = [t for t in (q, k, v, rel_pos) if t is not None]
    grad_out = torch.randn(batch, heads, height, width, value_dim, dtype=torch.float64, generator=gen)

    expected = dense_masked_attention(q, k, v, kernel_size, rel_pos)
    expected_grads = torch.autograd.grad(expected, leaves, grad_out)
    got = local_attention2d(q, k, v, kernel_size=kernel_size, rel_pos=rel_pos, backend="reference")
    got_grads = torch.autograd.grad(got, leaves, grad_out)
    torch.testing.assert_close(got, expected)
    for g, e in zip(got_grads, expected_grads):
        torch.testing.assert_close(g, e)
