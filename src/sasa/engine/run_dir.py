"""The run directory: one folder per training run, the same layout for every task.

    DIR/config.json      the full resolved config (CLI options, model config, data, world size)
    DIR/metrics.csv      one row per completed epoch (columns: union of the rows' keys)
    DIR/metrics.jsonl    the same rows, one JSON object per line
    DIR/curves.png       loss/accuracy (or any metric) curves, redrawn each epoch
    DIR/last.safetensors weights after the last completed epoch (+ metadata to rebuild the model)
    DIR/best.safetensors weights of the best epoch so far
    DIR/state.pt         everything needed to resume; written last, so it is the commit point

Every file is replaced atomically (see :mod:`sasa.engine.io`).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any

from sasa.engine.io import atomic_write_bytes, atomic_write_json, atomic_write_text, check_output_dir
from sasa.errors import UserError

_HELD_LOCKS: dict = {}  # resolved run path -> open, flock'ed file of this process
LOCK_FILE = ".lock"  # held (flock) by the process that trains in the directory
RUN_FILES = (
    "config.json", "metrics.csv", "metrics.jsonl", "curves.png", "last.safetensors", "best.safetensors", "state.pt",
)


class RunDir:
    """Paths and writers of one run directory. Build it with :meth:`create` or :meth:`open_existing`."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.config = self.path / "config.json"
        self.metrics_csv = self.path / "metrics.csv"
        self.metrics_jsonl = self.path / "metrics.jsonl"
        self.curves = self.path / "curves.png"
        self.last = self.path / "last.safetensors"
        self.best = self.path / "best.safetensors"
        self.state = self.path / "state.pt"

    # -- opening ---------------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike, *, force: bool = False, create: bool = True) -> "RunDir":
        """A fresh run directory, locked (see :meth:`lock`). An existing non-empty one is refused unless
        ``force``, which deletes only the run files listed in :data:`RUN_FILES` (anything else in the
        folder is left alone). ``create=False`` only checks, and writes nothing.
        """
        run = cls(path)
        check_output_dir(run.path)
        if run.path.is_dir() and any(p.name != LOCK_FILE for p in run.path.iterdir()) and not force:
            hint = f"use --resume {run.path} to continue it or --force" if run.state.is_file() else "use --force"
            raise UserError(f"run directory {str(run.path)!r} already exists and is not empty; {hint} to overwrite it")
        if create:
            run.lock()  # before deleting anything: refuses while another process trains here
            for name in RUN_FILES:
                (run.path / name).unlink(missing_ok=True)
        return run

    @classmethod
    def open_existing(cls, path: str | os.PathLike) -> "RunDir":
        """An existing run to resume: it must hold config.json and state.pt."""
        run = cls(path)
        if not run.path.is_dir():
            raise UserError(f"cannot resume: run directory {str(run.path)!r} does not exist")
        for required in (run.config, run.state):
            if not required.is_file():
                raise UserError(
                    f"cannot resume {str(run.path)!r}: {required.name} is missing "
                    "(no epoch was completed, or this is not a run directory)"
                )
        return run

    def lock(self) -> "RunDir":
        """Hold an exclusive lock on ``DIR/.lock`` for the rest of this process, so that a second training
        (a forgotten background run, ``--resume`` in another shell) cannot write the same run; then delete
        temporary files an interrupted atomic write left behind. Call it on the main rank only."""
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        key = str(self.path.resolve())
        if key not in _HELD_LOCKS:  # this process may lock its own run again (sequential runs, tests)
            handle = open(self.path / LOCK_FILE, "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                raise UserError(f"run directory {str(self.path)!r} is in use by another training process") from None
            _HELD_LOCKS[key] = handle  # released at process exit (or by discard)
        self.remove_stale_temp_files()
        return self

    def completed_epochs(self) -> int:
        """Epochs committed in state.pt (memory-mapped: the weights in it are not read)."""
        import torch

        try:
            return int(torch.load(self.state, map_location="cpu", mmap=True, weights_only=True)["epoch"])
        except Exception as error:  # torch raises a zoo of types for corrupt files
            raise UserError(f"training state {str(self.state)!r} is not readable ({type(error).__name__}: {error})") from None

    def discard(self) -> None:
        """Delete the run files and the lock of a run that never completed an epoch, and the folder if
        that leaves it empty (a failed start leaves nothing behind to --force away)."""
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)
        self.remove_stale_temp_files()
        handle = _HELD_LOCKS.pop(str(self.path.resolve()), None)
        (self.path / LOCK_FILE).unlink(missing_ok=True)
        if handle is not None:
            handle.close()
        try:
            self.path.rmdir()
        except OSError:
            pass  # the user's own files stay

    def remove_stale_temp_files(self) -> list[Path]:
        """Delete the ``.NAME.*.tmp`` files an interrupted atomic write of a run file left behind."""
        stale = [p for name in RUN_FILES for p in self.path.glob(f".{name}.*.tmp")]
        for path in stale:
            path.unlink(missing_ok=True)
        return stale

    # -- config ----------------------------------------------------------------------------------

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_json(self.config, config)

    def read_config(self) -> dict[str, Any]:
        try:
            return json.loads(self.config.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise UserError(f"cannot read {str(self.config)!r}: {error}") from None

    # -- metrics ---------------------------------------------------------------------------------

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_jsonl.is_file():
            return []
        rows = []
        for number, line in enumerate(self.metrics_jsonl.read_text().splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise UserError(f"{str(self.metrics_jsonl)!r} line {number} is not JSON ({error})") from None
        return rows

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Rewrite metrics.jsonl and metrics.csv from all rows (each write is atomic)."""
        atomic_write_text(self.metrics_jsonl, "".join(json.dumps(row) + "\n" for row in rows))
        columns: list[str] = []
        for row in rows:
            columns.extend(key for key in row if key not in columns)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.metrics_csv, buffer.getvalue())

    def plot_curves(self, rows: list[dict[str, Any]]) -> None:
        """Draw curves.png: losses in one panel, every other numeric ``train_*``/``val_*`` metric in another."""
        if not rows:
            return
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

        epochs = [row["epoch"] for row in rows]

        def numeric(key):
            values = [row.get(key) for row in rows]
            return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values), values

        keys = [k for k in rows[-1] if k.startswith(("train_", "val_"))]
        loss_keys = [k for k in keys if k.endswith("loss") and numeric(k)[0]]
        other_keys = [k for k in keys if not k.endswith("loss") and numeric(k)[0]]
        figure = Figure(figsize=(10, 4), dpi=100)
        for index, (group, title) in enumerate(((loss_keys, "loss"), (other_keys, "metrics"))):
            axis = figure.add_subplot(1, 2, index + 1)
            for key in group:
                axis.plot(epochs, numeric(key)[1], marker="o", markersize=3, label=key)
            axis.set_xlabel("epoch")
            axis.set_title(title)
            axis.grid(alpha=0.3)
            if group:
                axis.legend(fontsize=8)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        atomic_write_bytes(self.curves, buffer.getvalue())
