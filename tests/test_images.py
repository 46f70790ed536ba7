"""Image files as 8-bit RGB: 16-bit data scaled, not clipped to white."""
import numpy as np
import pytest
from PIL import Image

from sasa.images import open_rgb, to_rgb


def test_item23_sixteen_bit_grayscale_png_is_scaled(tmp_path):
    values = np.array([[0, 257, 32896], [65535, 12850, 514]], dtype=np.uint16)  # 8-bit: 0, 1, 128, 255, 50, 2
    Image.fromarray(values).save(tmp_path / "g16.png")
    image = open_rgb(tmp_path / "g16.png")
    assert image.mode == "RGB" and image.size == (3, 2)
    pixels = np.asarray(image)
    assert (pixels == (values // 257).astype(np.uint8)[..., None]).all()


@pytest.mark.parametrize("mode", ["I;16B", "I"])
def test_item23_other_wide_integer_modes(mode):
    values = np.array([[0, 65535], [32896, 257]], dtype=np.uint16)
    image = Image.fromarray(values).convert("I") if mode == "I" else Image.frombytes("I;16B", (2, 2), values.astype(">u2").tobytes())
    assert np.asarray(to_rgb(image))[..., 0].tolist() == [[0, 255], [128, 1]]


def test_eight_bit_modes_convert_as_pil_does(tmp_path):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (4, 5, 3), dtype=np.uint8), "RGB")
    for image in (rgb, rgb.convert("L"), rgb.convert("RGBA"), rgb.convert("P"), rgb.convert("L").convert("I")):
        assert np.array_equal(np.asarray(to_rgb(image)), np.asarray(image.convert("RGB")))
    rgb.save(tmp_path / "rgb.png")
    assert np.array_equal(np.asarray(open_rgb(tmp_path / "rgb.png")), np.asarray(rgb))
