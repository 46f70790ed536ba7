import csv
import json

import pytest

from sasa.engine import RunDir
from sasa.errors import UserError


def test_create_refuses_a_non_empty_directory_unless_forced(tmp_path):
    run_path = tmp_path / "run"
    run = RunDir.create(run_path)
    run.write_config({"a": 1})
    (run_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="use --force"):  # no state.pt: nothing to --resume
        RunDir.create(run_path)
    run.state.write_bytes(b"x")
    with pytest.raises(UserError, match="--resume"):
        RunDir.create(run_path)
    assert run.config.is_file()
    RunDir.create(run_path, force=True)
    assert not run.config.exists()
    assert (run_path / "notes.txt").read_text() == "mine"  # only run files are removed


def test_check_only_create_writes_nothing(tmp_path):
    RunDir.create(tmp_path / "run", create=False)
    assert not (tmp_path / "run").exists()


def test_open_existing_needs_config_and_state(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        RunDir.open_existing(tmp_path / "nope")
    run = RunDir.create(tmp_path / "run")
    run.write_config({})
    with pytest.raises(UserError, match="state.pt"):
        RunDir.open_existing(tmp_path / "run")


def test_open_existing_removes_stale_temp_files(tmp_path):
    run = RunDir.create(tmp_path / "run")
    run.write_config({})
    run.state.write_bytes(b"x")
    stale = run.path / ".last.safetensors.abc123.tmp"
    stale.write_bytes(b"half")
    RunDir.open_existing(run.path).lock()
    assert not stale.exists()


def test_a_locked_run_cannot_be_taken_over(tmp_path):
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from sasa.engine import RunDir; RunDir.create(sys.argv[1]).lock(); print('locked', flush=True);"
        " time.sleep(60)"), str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match="in use by another training process"):
            RunDir.create(tmp_path / "run", force=True)
        with pytest.raises(UserError, match="in use"):
            RunDir(tmp_path / "run").lock()
    finally:
        holder.kill()
        holder.wait()
    RunDir.create(tmp_path / "run", force=True)  # the lock died with its process


def test_metrics_csv_jsonl_and_curves(tmp_path):
    run = RunDir.create(tmp_path / "run")
    rows = [
        {"epoch": 1, "train_loss": 2.0, "train_acc": 10.0, "val_loss": 2.1, "val_top1": 12.0, "lr": 0.1},
        {"epoch": 2, "train_loss": 1.0, "train_acc": 60.0, "val_loss": 1.1, "val_top1": 55.0, "lr": 0.05,
         "train_skipped_images": 1},
    ]
    run.write_metrics(rows)
    run.plot_curves(rows)
    assert run.read_metrics() == rows
    with open(run.metrics_csv) as handle:
        table = list(csv.DictReader(handle))
    assert [r["epoch"] for r in table] == ["1", "2"]
    assert table[0]["train_skipped_images"] == "" and table[1]["train_skipped_images"] == "1"
    assert run.curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(run.metrics_jsonl.read_text().splitlines()[0])["epoch"] == 1
