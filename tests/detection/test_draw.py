"""Drawn output files: one distinct PNG per input, never an input."""
import os

from sasa.detection.draw import output_paths


def test_item3_outputs_are_unique_for_inputs_sharing_a_stem(tmp_path):
    inputs = [str(tmp_path / "a" / "x.png"), str(tmp_path / "a" / "x.jpg"), str(tmp_path / "b" / "x.png"),
              str(tmp_path / "c" / "x.png")]
    paths = output_paths(inputs, tmp_path / "out")
    assert [p.name for p in paths] == ["x.png", "x_jpg.png", "x_png.png", "x_png_2.png"]
    assert len(set(paths)) == len(paths)


def test_item3_output_never_overwrites_an_input(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photo.png").write_bytes(b"")
    assert output_paths(["photo.png"], ".") == [tmp_path.joinpath("photo_png.png").relative_to(tmp_path)]
    assert output_paths([str(tmp_path / "photo.png")], tmp_path)[0].name == "photo_png.png"
    os.symlink(tmp_path / "photo.png", tmp_path / "link.png")
    (tmp_path / "sub").mkdir()
    assert output_paths([str(tmp_path / "link.png"), "sub/photo.png"], ".")[0].name == "link_png.png"
    # an input named like the output of another input, and the reserved json
    inputs = ["out/x.png", "x.png", "detections.png"]
    assert [p.name for p in output_paths(inputs, "out", reserved=("detections.png",))] == [
        "x_png.png", "x_png_2.png", "detections_png.png"]  # out/x.png is the first input
