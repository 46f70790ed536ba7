import os

import pytest

from sasa.errors import UserError
import torch

from sasa.engine import atomic_write_text, load_state, load_weights, save_state, save_weights
from sasa.engine import io as engine_io
from sasa.engine.trainer import rng_state, set_rng_state
from sasa.errors import UserError


def test_atomic_write_replaces_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_failed_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")

    def broken_replace(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(engine_io.os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_weights_round_trip_with_metadata(tmp_path):
    weights = {"fc.weight": torch.randn(3, 4), "fc.bias": torch.zeros(3)}
    meta = {"model": "resnet26", "num_classes": 3, "class_names": ["a", "b", "c"], "preprocess": {"img_size": 32}}
    save_weights(tmp_path / "w.safetensors", weights, meta)
    loaded, loaded_meta = load_weights(tmp_path / "w.safetensors")
    assert loaded_meta == meta
    assert torch.equal(loaded["fc.weight"], weights["fc.weight"])


def test_load_weights_errors_name_the_file(tmp_path):
    with pytest.raises(UserError, match="nope.safetensors"):
        load_weights(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ValueError, match="bad.safetensors"):
        load_weights(bad)


def test_state_with_rng_round_trips_through_weights_only_load(tmp_path):
    torch.manual_seed(3)
    save_state(tmp_path / "state.pt", {"epoch": 2, "rng": [rng_state()], "best": None})
    expected = torch.rand(3)
    torch.manual_seed(99)
    state = load_state(tmp_path / "state.pt")
    set_rng_state(state["rng"][0])
    assert torch.equal(torch.rand(3), expected)
    assert state["epoch"] == 2


def test_corrupt_state_is_a_value_error(tmp_path):
    (tmp_path / "state.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="state.pt"):
        load_state(tmp_path / "state.pt")
    assert not os.path.exists(tmp_path / "missing.pt")
    with pytest.raises(UserError):
        load_state(tmp_path / "missing.pt")
