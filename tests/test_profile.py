import subprocess
import sys

import torch

import sasa
from sasa.profile import count_flops, input_channels


def test_item20_profile_after_plain_import_sasa():
    """The README's ``sasa.profile.count_params(model)`` works after ``import sasa`` alone (fresh interpreter)."""
    code = "import sasa; m = sasa.create_model('resnet26'); print(sasa.profile.count_params(m), sasa.count_params(m))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    params = sasa.profile.count_params(sasa.create_model("resnet26"))
    assert result.stdout.split() == [str(params), str(params)]


def test_item20_count_flops_uses_the_models_input_channels():
    for name in ("resnet26", "sa_resnet26"):
        gray = sasa.create_model(name, num_classes=10, in_chans=1)
        assert input_channels(gray) == 1
        flops = count_flops(gray, 32)  # failed before: a 3-channel image was generated
        assert flops == count_flops(gray, (1, 32, 32)) and flops < count_flops(sasa.create_model(name, num_classes=10), 32)


def test_count_flops_without_in_chans_attribute():
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1))
    assert input_channels(model) == 2
    assert count_flops(model, 5) == 2 * 5 * 5 * 4 * 2 * 9
