import pytest
import torch
from torch import nn

from sasa.layers.projection import _applies, project


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(2, 5, 7, 3), (1, 8, 1, 1), (3, 16, 9, 12)])
def test_onednn_projection_matches_the_conv(bias, shape):
    """Without autograd the oneDNN path gives nn.Conv2d's values (non-contiguous input included)."""
    if not torch.backends.mkldnn.is_available():
        pytest.skip("no oneDNN")
    torch.manual_seed(0)
    conv = nn.Conv2d(shape[1], 3 * shape[1] + 1, 1, bias=bias)
    x = torch.randn(*shape)
    with torch.no_grad():
        assert _applies(conv, x)
        torch.testing.assert_close(project(conv, x), conv(x))
        x_t = torch.randn(shape[0], shape[1], shape[3], shape[2]).transpose(2, 3)
        torch.testing.assert_close(project(conv, x_t), conv(x_t))
    with torch.inference_mode():
        torch.testing.assert_close(project(conv, x), conv(x))


def test_autograd_other_convs_and_dtypes_take_the_plain_conv():
    conv = nn.Conv2d(4, 8, 1)
    x = torch.randn(1, 4, 3, 3)
    assert not _applies(conv, x)  # the weight requires grad
    with torch.no_grad():
        assert not _applies(conv, x.double())
        assert not _applies(nn.Conv2d(4, 8, 1, stride=2), x)
        assert not _applies(nn.Conv2d(4, 8, 3, padding=1), x)
    x = x.requires_grad_()
    out = project(conv, x)
    assert out.grad_fn is not None and "Convolution" in type(out.grad_fn).__name__
