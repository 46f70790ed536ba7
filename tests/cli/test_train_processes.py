"""Real processes: a SIGKILL mid-training followed by a clean resume, and a 2-process torchrun run."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from sasa.engine import load_state, load_weights

SMALL = ["--data", "digits", "--limit-val", "32", "--img-size", "16", "--batch-size", "32", "--workers", "0"]


def sasa(*argv, **kwargs):
    return subprocess.run([sys.executable, "-m", "sasa", *argv], capture_output=True, text=True, timeout=300, **kwargs)


def test_sigkill_after_a_checkpoint_then_resume(tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "sasa", "train", "--model", "resnet26", "--out", str(out), "--epochs", "3",
         "--limit-train", "128", *SMALL], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while not (out / "state.pt").exists():  # first epoch committed
            assert process.poll() is None, "training ended before its first checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)  # land somewhere in epoch 2 (or in its checkpoint writes)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    done = load_state(out / "state.pt")["epoch"]
    assert done in (1, 2, 3)
    for name in ("last.safetensors", "best.safetensors"):
        load_weights(out / name)  # readable, whatever the moment of the kill
    result = sasa("train", "--resume", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert load_state(out / "state.pt")["epoch"] == 3
    _, meta = load_weights(out / "last.safetensors")
    assert meta["epoch"] == 3
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_torchrun_two_cpu_processes(tmp_path):
    out = tmp_path / "ddp"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "sasa", "train",
         "--model", "resnet26", "--out", str(out), "--epochs", "1", "--limit-train", "64", "--device", "cpu", *SMALL],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sum(line.startswith("epoch 1/1  train_loss") for line in result.stdout.splitlines()) == 1  # rank 0 only
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 2
    (row,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert row["epoch"] == 1 and 0 <= row["val_top1"] <= 100
    # evaluation of the shards summed over both ranks equals a single-process evaluation
    evaluated = sasa("eval", "--checkpoint", str(out / "last.safetensors"), "--data", "digits", "--limit-val", "32",
                     "--out", str(tmp_path / "eval.json"))
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads((tmp_path / "eval.json").read_text())["top1"] == pytest.approx(row["val_top1"], abs=1e-6)
