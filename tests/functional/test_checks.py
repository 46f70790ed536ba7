"""Every bad input to local_attention2d raises an error naming the argument, what it got and what was expected."""
import pytest
import torch

from sasa.functional import local_attention2d


def _inputs(shape=(2, 2, 5, 5, 4), dtype=torch.float32):
    return [torch.randn(shape, dtype=dtype) for _ in range(3)]


def test_wrong_rank():
    q, k, v = _inputs()
    with pytest.raises(ValueError, match=r"q must have 5 dimensions .*got 4"):
        local_attention2d(q[0], k, v, kernel_size=3)


def test_not_a_tensor():
    q, k, v = _inputs()
    with pytest.raises(TypeError, match="k must be a torch.Tensor, got list"):
        local_attention2d(q, [1, 2], v, kernel_size=3)


@pytest.mark.parametrize("dim,bad", [(0, 3), (1, 3), (2, 6), (3, 4), (4, 5)])
def test_k_shape_mismatch(dim, bad):
    q, _, v = _inputs()
    shape = list(q.shape)
    shape[dim] = bad
    with pytest.raises(ValueError, match=r"k must have the shape of q \(2, 2, 5, 5, 4\)"):
        local_attention2d(q, torch.randn(shape), v, kernel_size=3)


@pytest.mark.parametrize("dim", [0, 1, 2, 3])
def test_v_shape_mismatch(dim):
    q, k, _ = _inputs()
    shape = list(q.shape)
    shape[dim] += 1
    with pytest.raises(ValueError, match=r"v must match q in \(B, N, H, W\)"):
        local_attention2d(q, k, torch.randn(shape), kernel_size=3)


def test_value_dim_may_differ():
    q, k, _ = _inputs()
    out = local_attention2d(q, k, torch.randn(2, 2, 5, 5, 7), kernel_size=3)
    assert out.shape == (2, 2, 5, 5, 7)


@pytest.mark.parametrize("kernel_size", [0, -3, 2, 4])
def test_bad_kernel_size(kernel_size):
    with pytest.raises(ValueError, match=f"kernel_size must be a positive odd integer, got {kernel_size}"):
        local_attention2d(*_inputs(), kernel_size=kernel_size)


@pytest.mark.parametrize("kernel_size", [3.0, "3", True])
def test_kernel_size_type(kernel_size):
    with pytest.raises(TypeError, match="kernel_size must be an int"):
        local_attention2d(*_inputs(), kernel_size=kernel_size)


@pytest.mark.parametrize("shape", [(3, 3), (5, 5, 4), (3, 3, 3), (3, 3, 3, 4), (1, 3, 3, 4)])
def test_rel_pos_shape(shape):
    with pytest.raises(ValueError, match=r"rel_pos must have shape \(3, 3, 4\) .* or \(2, 3, 3, 4\) .*got"):
        local_attention2d(*_inputs(), kernel_size=3, rel_pos=torch.randn(shape))


def test_dtype_mismatch():
    q, k, v = _inputs()
    with pytest.raises(TypeError, match="v must have the dtype of q \\(torch.float32\\), got torch.float64"):
        local_attention2d(q, k, v.double(), kernel_size=3)
    with pytest.raises(TypeError, match="rel_pos must have the dtype of q"):
        local_attention2d(q, k, v, kernel_size=3, rel_pos=torch.randn(3, 3, 4, dtype=torch.float64))


def test_integer_dtype():
    q, k, v = _inputs()
    with pytest.raises(TypeError, match="q must be a floating tensor"):
        local_attention2d(q.long(), k, v, kernel_size=3)


def test_device_mismatch():
    q, k, v = _inputs()
    with pytest.raises(ValueError, match="k must be on the device of q"):
        local_attention2d(q, k.to("meta"), v, kernel_size=3)


def test_empty_heads_or_channels():
    q, k, v = _inputs(shape=(1, 0, 5, 5, 4))
    with pytest.raises(ValueError, match="at least one head and channel"):
        local_attention2d(q, k, v, kernel_size=3)


@pytest.mark.parametrize("shape", [(0, 2, 5, 5, 4), (2, 2, 0, 5, 4), (2, 2, 5, 0, 4)])
@pytest.mark.parametrize("backend", ["auto", "reference", "chunked", "cpu_fused"])
def test_item33_empty_batch_or_image_gives_empty_output(shape, backend):
    q, k, v = (t.requires_grad_(True) for t in _inputs(shape=shape))
    rel_pos = torch.randn(3, 3, 4, requires_grad=True)
    out = local_attention2d(q, k, v, kernel_size=3, rel_pos=rel_pos, backend=backend)
    assert out.shape == shape
    out.sum().backward()
    assert q.grad.shape == shape and rel_pos.grad.abs().sum() == 0


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be 'auto' or one of .*got 'nope'"):
        local_attention2d(*_inputs(), kernel_size=3, backend="nope")
