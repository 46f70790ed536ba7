"""The models on a CUDA GPU (skipped without one): the same outputs and gradients as on CPU, autocast in fp16
and bf16, and torch.compile(fullgraph=True) with the CUDA backend of the op (FlexAttention)."""
from __future__ import annotations

import pytest
import torch


pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TINY = dict(layers=(1, 1, 1, 1), widths=(16, 16, 16, 32), stem_channels=16, num_heads=2)


@pytest.fixture(autouse=True)
def _ieee_float32():
    """cuDNN convolutions default to TF32 (10-bit mantissa), whose error grows over a network's depth past any
    float32 tolerance: compare with it off (the autocast tests set their own precision)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _on_cpu(result):
    out, grads = result
    return out.cpu(), [g.cpu() for g in grads]


@pytest.mark.parametrize("name", ["sa_resnet26", "sa_resnet26_convstem", "axial_resnet26_s"])
def test_cuda_train_step_equals_cpu(name, seeded_model, train_step):
    model = seeded_model(name, **({} if name.startswith("axial") else TINY))
    x = torch.randn(2, 3, 40, 56)
    want_out, want_grads = _on_cpu(train_step(model, x))
    got_out, got_grads = _on_cpu(train_step(model.cuda(), x.cuda()))
    torch.testing.assert_close(got_out, want_out, atol=2e-3, rtol=2e-3)
    for got, want in zip(got_grads, want_grads):
        torch.testing.assert_close(got, want, atol=5e-3, rtol=5e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_cuda_autocast_train_step_is_finite_and_close_to_float32(dtype, seeded_model, train_step):
    model = seeded_model("sa_resnet26", **TINY).cuda()
    x = torch.randn(4, 3, 48, 48, device="cuda")
    want_out, _ = _on_cpu(train_step(model, x))
    with torch.autocast("cuda", dtype=dtype):
        got_out, got_grads = _on_cpu(train_step(model, x))
    assert torch.isfinite(got_out).all() and all(torch.isfinite(g).all() for g in got_grads)
    torch.testing.assert_close(got_out.float(), want_out, atol=0.15, rtol=0.05)


def test_cuda_compiled_train_step_fullgraph_equals_eager(seeded_model, train_step):
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    model = seeded_model("sa_resnet26", **TINY).cuda()
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    for shape in [(2, 3, 64, 64), (2, 3, 64, 64)]:
        x = torch.randn(*shape, device="cuda")
        want_out, want_grads = _on_cpu(train_step(model, x))
        got_out, got_grads = _on_cpu(train_step(compiled, x))
        torch.testing.assert_close(got_out, want_out, atol=2e-3, rtol=2e-3)
        for got, want in zip(got_grads, want_grads):
            torch.testing.assert_close(got, want, atol=5e-3, rtol=5e-3)
    assert counter.frame_count == 1
    torch._dynamo.reset()
