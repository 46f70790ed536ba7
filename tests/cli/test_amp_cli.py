"""`--amp` end to end for every model family: a short CLI training under autocast gives finite losses and
metrics, and the run directory records the dtype (issue 12 item 4). On CUDA the same runs use the GPU."""
import math

import pytest
import torch

from sasa.cli.main import main
from sasa.engine import RunDir
from sasa.engine.trainer import amp_dtype

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
CLASSIFIERS = ["resnet26", "sa_resnet26", "sa_resnet26_convstem", "axial_resnet26_s"]


def _assert_finite(row, keys):
    for key in keys:
        assert math.isfinite(row[key]), (key, row)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("model", CLASSIFIERS)
@pytest.mark.filterwarnings("ignore:--amp-dtype float16 on CPU")
def test_amp_classifier_trains_with_finite_losses(tmp_path, model, dtype, device):
    out = tmp_path / "run"
    assert main(["train", "--model", model, "--data", "digits", "--out", str(out), "--epochs", "1",
                 "--limit-train", "32", "--limit-val", "16", "--img-size", "32", "--batch-size", "16",
                 "--amp", "--amp-dtype", dtype, "--device", device, "--quiet"]) == 0
    (row,) = RunDir(out).read_metrics()
    _assert_finite(row, ("train_loss", "val_loss", "val_top1"))


@pytest.mark.parametrize("device", DEVICES)
def test_amp_detector_with_attention_heads_trains_with_finite_losses(tmp_path, device):
    out = tmp_path / "det"
    assert main(["detect-train", "--model", "retinanet_sa_resnet26_attnhead", "--out", str(out), "--epochs", "1",
                 "--shapes-train", "8", "--shapes-val", "4", "--img-size", "64", "--batch-size", "4",
                 "--amp", "--device", device, "--quiet"]) == 0
    (row,) = RunDir(out).read_metrics()
    _assert_finite(row, ("train_loss", "train_cls_loss", "train_box_loss"))


def test_float16_on_cpu_warns_that_it_is_slow(tmp_path):
    with pytest.warns(UserWarning, match="float16 on CPU runs about 25x slower"):
        main(["train", "--model", "resnet26", "--data", "digits", "--out", str(tmp_path / "run"), "--epochs", "1",
              "--limit-train", "16", "--limit-val", "8", "--img-size", "16", "--batch-size", "8",
              "--amp", "--amp-dtype", "float16", "--device", "cpu", "--quiet"])


def test_amp_dtype_auto_is_bf16_on_cpu_fp16_on_cuda_and_names_a_bad_value():
    assert amp_dtype(torch.device("cpu")) is torch.bfloat16
    assert amp_dtype(torch.device("cuda")) is torch.float16
    assert amp_dtype(torch.device("cuda"), "bfloat16") is torch.bfloat16
    with pytest.raises(ValueError, match="'half'"):
        amp_dtype(torch.device("cpu"), "half")
