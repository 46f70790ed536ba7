"""torch.compile (fullgraph, dynamic batch/image size) and torch.export of the attention models.

The default run uses a reduced sa_resnet26 (same stem, blocks and op, fewer and narrower layers)
through AOTAutograd's eager backend; inductor (the reduced model, then the full sa_resnet26) is marked slow:
its first compile of the reduced train step takes minutes on 2 CPU cores.
"""
from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend


TINY = dict(layers=(1, 1, 1, 1), widths=(8, 8, 8, 16), stem_channels=16, num_heads=2, kernel_size=3)
# distinct batch/H/W on the first call: dynamo's duck sizing would otherwise tie equal sizes together
SHAPES = [(2, 3, 64, 96), (3, 3, 96, 64), (4, 3, 128, 160)]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# inductor's CPU float sums over more than 4096 elements take a more precise kernel, chosen at compile time: a
# train step whose BN reductions (batch x pixels per channel, at H/4 .. H/32) cross 4096 compiles once more.
# These shapes stay below at every stage, so any compile after the first is a size specialization.
INDUCTOR_SHAPES = [(2, 3, 64, 96), (3, 3, 96, 64), (4, 3, 128, 96)]


def _check_compiled_training(model, train_step, backend: str, shapes, atol=1e-4, rtol=1e-4,
                             dtype=torch.float32) -> None:
    """Compiled train steps equal eager ones, and later batch/image sizes compile nothing new."""
    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend=counter)
    compiles_after_first = None
    for shape in shapes:
        x = torch.randn(*shape, dtype=dtype)
        # eager first: einops registers its backends on first use, and dynamo guards on that registry
        want_out, want_grads = train_step(model, x)
        got_out, got_grads = train_step(compiled, x)
        torch.testing.assert_close(got_out, want_out, atol=atol, rtol=rtol)
        for got, want in zip(got_grads, want_grads):
            torch.testing.assert_close(got, want, atol=atol, rtol=rtol)
        compiles_after_first = compiles_after_first or counter.frame_count
        assert counter.frame_count == compiles_after_first, f"recompiled for input shape {shape}"


def test_compile_fullgraph_no_recompile_small(seeded_model, train_step):
    model = seeded_model("sa_resnet26", **TINY).train()
    _check_compiled_training(model, train_step, "aot_eager", SHAPES[:2])


def test_compile_fullgraph_inference_small(seeded_model):
    """Eval under inference_mode (the layer's oneDNN projection path is eager-only) compiles without a graph break."""
    model = seeded_model("sa_resnet26", **TINY).eval()
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend="aot_eager")
    x = torch.randn(*SHAPES[0])
    with torch.inference_mode():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_compile_inductor_no_recompile_small(seeded_model, train_step):
    """The 1×1 convs run as matmuls under compile (sasa.layers.projection.conv1x1); as convs, inductor specializes."""
    model = seeded_model("sa_resnet26", **TINY).train()
    _check_compiled_training(model, train_step, "inductor", INDUCTOR_SHAPES, atol=1e-3, rtol=1e-3)


@pytest.mark.slow
def test_compile_sa_resnet26_inductor(seeded_model, train_step):
    """float64: in float32, 5 of the 256 gradients of a stem per-position table (value_row/value_col) differed by
    up to 3% between eager and compiled steps, most likely near-ties of the 4x4 max pool that float32 rounding
    flips to another pixel; in float64 everything agrees to 1e-6."""
    model = seeded_model("sa_resnet26").train().double()
    _check_compiled_training(model, train_step, "inductor", INDUCTOR_SHAPES, atol=1e-6, rtol=1e-6, dtype=torch.float64)


def _check_export(model, shapes):
    model.eval()
    # image sides are multiples of the network stride 32 (the 4x4 stem blocks guard on it), >= 64
    batch = torch.export.Dim("batch", min=2, max=64)
    rows, cols = (torch.export.Dim(name, min=2, max=32) for name in ("rows", "cols"))
    program = torch.export.export(
        model, (torch.randn(*shapes[0]),), dynamic_shapes=({0: batch, 2: 32 * rows, 3: 32 * cols},)
    )
    assert any("cpu_fused_forward" in str(node.target) for node in program.graph.nodes)
    for shape in shapes:
        x = torch.randn(*shape)
        with torch.no_grad():
            torch.testing.assert_close(program.module()(x), model(x), atol=1e-4, rtol=1e-4)


def test_export_small(seeded_model):
    _check_export(seeded_model("sa_resnet26", **TINY), SHAPES[:2])


@pytest.mark.slow
def test_export_sa_resnet26(seeded_model):
    _check_export(seeded_model("sa_resnet26"), SHAPES)
