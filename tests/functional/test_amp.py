"""The op under torch.autocast: float32 relative embeddings meet bfloat16 projections (issue 14 item 1)."""
import pytest
import torch

from sasa.functional import local_attention2d, local_attention2d_packed, local_attention2d_reference


@pytest.mark.parametrize("backend", ["auto", "reference", "chunked"])
def test_item1_autocast_op_takes_float32_rel_pos_with_bfloat16_qkv(backend):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 5, 6, 4, generator=gen).bfloat16().requires_grad_(True) for _ in range(3))
    rel_pos = torch.randn(2, 3, 3, 4, generator=gen, requires_grad=True)  # a float32 parameter
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = local_attention2d(q, k, v, kernel_size=3, rel_pos=rel_pos, backend=backend)
    assert out.dtype == torch.bfloat16
    out.float().square().sum().backward()
    assert rel_pos.grad.dtype == torch.float32 and torch.isfinite(rel_pos.grad).all()
    expected = local_attention2d_reference(q.double(), k.double(), v.double(), kernel_size=3,
                                           rel_pos=rel_pos.bfloat16().double())
    torch.testing.assert_close(out.double(), expected, atol=2e-2, rtol=2e-2)


def test_item1_autocast_packed_entry():
    gen = torch.Generator().manual_seed(1)
    qkv = torch.randn(2, 3 * 8, 5, 5, generator=gen).bfloat16()
    rel_pos = torch.randn(3, 3, 4, generator=gen, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = local_attention2d_packed(qkv, num_heads=2, kernel_size=3, rel_pos=rel_pos, scale=0.5)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 8, 5, 5)
    out.float().sum().backward()
    assert torch.isfinite(rel_pos.grad).all()
    q, k, v = (t.unflatten(1, (2, 4)).permute(0, 1, 3, 4, 2).double() for t in qkv.chunk(3, dim=1))
    expected = local_attention2d_reference(q * 0.5, k, v, kernel_size=3, rel_pos=rel_pos.bfloat16().double())
    torch.testing.assert_close(out.double(), expected.permute(0, 1, 4, 2, 3).flatten(1, 2), atol=2e-2, rtol=2e-2)


def test_mixed_dtypes_without_autocast_still_refused():
    q = torch.randn(1, 1, 3, 3, 2).bfloat16()
    with pytest.raises(TypeError, match="rel_pos must have the dtype of q"):
        local_attention2d(q, q, q, kernel_size=3, rel_pos=torch.randn(3, 3, 2))


@pytest.mark.parametrize("length,radius", [(6, 5), (9, 2)], ids=["global", "banded"])
def test_autocast_axial_op_takes_float32_tables_with_bfloat16_qkv(length, radius):
    """Axial attention under autocast: bf16 q, k, v meet the layer's float32 tables (it raised before)."""
    from sasa.functional.axial import axial_attention1d

    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 2, length, 4, generator=gen).bfloat16() for _ in range(3))
    tables = [torch.randn(2 * radius + 1, 4, generator=gen, requires_grad=True) for _ in range(3)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = axial_attention1d(q, k, v, rel_q=tables[0], rel_k=tables[1], rel_v=tables[2])
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert all(t.grad.dtype == torch.float32 and torch.isfinite(t.grad).all() for t in tables)
    expected = axial_attention1d(q.double(), k.double(), v.double(), backend="reference",
                                 **{name: t.detach().bfloat16().double() for name, t in zip(("rel_q", "rel_k", "rel_v"), tables)})
    torch.testing.assert_close(out.double(), expected, atol=5e-2, rtol=5e-2)
