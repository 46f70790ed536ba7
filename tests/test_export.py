"""ONNX export (sasa.export): onnxruntime gives PyTorch's logits at several image sizes from one file."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from sasa.export import export_onnx, onnx_ready
from sasa.models import create_model

TINY = dict(layers=(1, 1, 1, 1), widths=(8, 8, 8, 16), stem_channels=16, num_heads=2, kernel_size=3)
# traced at 64; then sizes that are not multiples of the stem's 4×4 blocks or of the network stride 32
SIZES = [(2, 3, 64, 64), (1, 3, 50, 77), (3, 3, 97, 45)]


def _model(name: str, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, **TINY, **overrides)
    for module in model.modules():  # non-trivial BN: zero-init residual BN would hide the blocks
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.uniform_(module.running_mean, -0.1, 0.1)
    return model.eval()


def assert_onnx_matches(path, model, sizes) -> None:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in sizes:
        x = torch.randn(*shape)
        with torch.no_grad():
            want = model(x).numpy()
        (got,) = session.run(None, {"images": x.numpy()})
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4, err_msg=f"input {shape}")


@pytest.mark.parametrize("name, overrides", [
    ("sa_resnet26", {}),
    ("sa_resnet26_convstem", dict(padding="zeros", positional="absolute", qkv_norm=True)),
    ("sa_resnet26", dict(content=False, stem_values="conv")),
], ids=["sa_resnet26", "convstem-zeros-absolute", "content-off-conv-values"])
def test_onnx_equals_pytorch_at_any_size(name, overrides, tmp_path):
    model = _model(name, **overrides)
    path = export_onnx(model, tmp_path / "model.onnx", img_size=64)
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(path))).graph
    # standard ONNX ops only (no custom domain), and the attention layers build no unfolded
    # (B, N, H, W, k, k, D) windows: rank <= 5 (the stem's block rearranges are rank 6 and 7)
    assert {node.domain for node in graph.node} <= {"", "ai.onnx"}
    producer = {output: node.name for node in graph.node for output in node.output}
    ranks = [len(info.type.tensor_type.shape.dim) for info in graph.value_info if "/conv2/" in producer[info.name]]
    assert ranks and max(ranks) == 5
    assert_onnx_matches(path, model, SIZES)
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temporary left behind


def test_onnx_ready_keeps_values():
    model = _model("sa_resnet26")
    x = torch.randn(2, 3, 40, 36)
    with torch.no_grad():
        torch.testing.assert_close(onnx_ready(model)(x), model(x), atol=1e-5, rtol=1e-5)


def test_axial_refused_by_name(tmp_path):
    model = create_model("axial_resnet26_s", num_classes=5, layers=(1, 1, 1, 1))
    with pytest.raises(ValueError, match=r"layer1\.0\.conv2.*AxialMixer2d"):
        export_onnx(model, tmp_path / "model.onnx", img_size=64)
    assert not list(tmp_path.iterdir())
