"""Real processes: a SIGKILL mid-training followed by a clean resume, and a 2-process torchrun run."""
import contextlib
import glob
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


def _children(pid):
    """Process ids whose parent is ``pid`` (torchrun starts each worker in a session of its own)."""
    found = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = open(stat).read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.split("/")[2]))
    return found


def _torchrun(*argv, timeout, workdir):
    """2-process torchrun on CPU, killed with its workers after ``timeout`` seconds, so that a deadlock
    fails the test instead of hanging it. Output goes to files: a killed run's orphans hold no pipe."""
    stdout_path, stderr_path = workdir / "stdout.txt", workdir / "stderr.txt"
    with open(stdout_path, "w") as stdout, open(stderr_path, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "sasa", *argv],
            stdout=stdout, stderr=stderr, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for pid in [*_children(process.pid), process.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            process.wait()
            pytest.fail(f"torchrun did not finish within {timeout}s (deadlock?)")
    return process.returncode, stdout_path.read_text(), stderr_path.read_text()


@pytest.fixture(scope="module")
def ddp_run_with_unreadable_batches(tmp_path_factory):
    """Every rank gets a batch made only of zero-byte PNGs: 2 readable + 10 empty training files, 6 per
    rank in batches of 2. EMA on, so the EMA's BatchNorm statistics are checked too."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("ddp")
    rng = np.random.default_rng(0)
    for split, counts in (("train", {"a": 2, "b": 0}), ("val", {"a": 3, "b": 3})):
        for name, readable in counts.items():
            (root / "data" / split / name).mkdir(parents=True)
            for i in range(readable):
                Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / "data" / split / name / f"{i}.png")
    for i in range(10):
        (root / "data" / "train" / "b" / f"empty{i}.png").write_bytes(b"")
    out = root / "run"
    code, stdout, stderr = _torchrun(
        "train", "--model", "resnet26", "--data", str(root / "data"), "--out", str(out), "--img-size", "16",
        "--epochs", "2", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--ema", "--quiet", timeout=240,
        workdir=root,
    )
    return root, out, code, stdout, stderr


def test_item10_torchrun_survives_batches_of_unreadable_images(ddp_run_with_unreadable_batches):
    root, out, code, stdout, stderr = ddp_run_with_unreadable_batches
    assert code == 0, stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["train_skipped_images"] for row in rows] == [10, 10]  # every empty file, every epoch
    assert load_state(out / "state.pt")["num_updates"] == 2 * 3  # no step skipped: the schedule is whole


def test_item11_torchrun_logged_val_metrics_are_those_of_the_saved_weights(ddp_run_with_unreadable_batches):
    root, out, code, stdout, stderr = ddp_run_with_unreadable_batches
    assert code == 0, stderr[-3000:]
    row = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    evaluated = sasa("eval", "--checkpoint", str(out / "last.safetensors"), "--data", str(root / "data"),
                     "--out", str(root / "eval.json"))
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads((root / "eval.json").read_text())
    assert result["loss"] == pytest.approx(row["val_loss"], rel=1e-5)
    assert result["top1"] == pytest.approx(row["val_top1"], abs=1e-6)
