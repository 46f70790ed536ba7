"""The ablation study: train every row of a table with several seeds, resumable row by row.

Layout of the study folder::

    results/t3_34_s0.json        one finished (row, seed): its best val top-1 and wall time (written atomically)
    runs/t3_34_s0/               that training's run directory (resumed if interrupted mid-training)
    ablation.json, ablation.csv  one record per row: cost at the paper's setting, top-1 mean ± std over seeds
    ablation.png                 accuracy vs FLOPs and vs parameters, ours beside the paper's

A (row, seed) whose result file exists is never retrained, so an interrupted study continues where it
stopped; a row that is the same model as a finished one (Table 4's k=7, Table 5's relative, Table 6's
q·k + q·r and Table 3's "1234" are one ResNet) takes that result, marked ``same_as``. The rows are trained on the ResNet-``depth`` layout (default 26: the study must fit a CPU), with
the data's recipe; their parameters and FLOPs are reported for the paper's ResNet-50 at 224.
"""
from __future__ import annotations

import csv
import io
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

from sasa.ablation.profile import profile_row
from sasa.ablation.tables import AblationRow
from sasa.engine.io import atomic_write_bytes, atomic_write_json, atomic_write_text

Log = Callable[[str], None]


def row_key(row: AblationRow, seed: int) -> str:
    return f"t{row.table}_{row.row or 'none'}_s{seed}"


def train_row(row: AblationRow, *, seed: int, data: str, depth: int, run_dir: Path, overrides: dict[str, Any]) -> dict:
    """Train one (row, seed) with the data's recipe; returns its best val top-1 and wall time."""
    from sasa.classification import resolve_options, resume, train

    model, model_opt = row.model_kwargs(depth)
    started = time.perf_counter()
    if (run_dir / "state.pt").exists():  # interrupted mid-training: continue after its last epoch
        result = resume(run_dir, quiet=True)
    else:
        given = {"model": model, "model_opt": model_opt, "data": data, "seed": seed, "quiet": True, **overrides}
        result = train(resolve_options(given), out=run_dir, force=True)
    return {"top1": result.best_value, "best_epoch": result.best_epoch, "epochs": len(result.rows),
            "seconds": time.perf_counter() - started, "model": model, "model_opt": model_opt}


def run_study(rows: list[AblationRow], *, out: Path, data: str, seeds: int, depth: int = 26,
              overrides: dict[str, Any] | None = None, log: Log = print) -> list[dict]:
    """Train each (row, seed) not yet done, then write ablation.json/.csv/.png; returns the row records."""
    out = Path(out)
    (out / "results").mkdir(parents=True, exist_ok=True)
    for row in rows:
        for seed in range(seeds):
            key = row_key(row, seed)
            result_file = out / "results" / f"{key}.json"
            if result_file.exists():
                continue
            header = {"table": row.table, "row": row.row, "seed": seed, "data": data, "depth": depth,
                      "overrides": overrides or {}}
            twin = finished_twin(row, out=out, header=header)
            if twin is not None:  # the same model, seed and recipe already trained under another row's label
                atomic_write_json(result_file, {**twin, **header, "key": None, "seconds": 0.0, "same_as": twin["key"]})
                log(f"ablation: {key}: the same training as {twin['key']} (best val top-1 {twin['top1']:.2f}%)")
                continue
            log(f"ablation: training table {row.table} row {row.row!r} seed {seed} ({row.description})")
            result = train_row(row, seed=seed, data=data, depth=depth, run_dir=out / "runs" / key,
                               overrides=overrides or {})
            atomic_write_json(result_file, {**header, **result})
            log(f"ablation: {key}: best val top-1 {result['top1']:.2f}% in {result['seconds']:.0f} s")
    records = [summarise(row, out=out, seeds=seeds) for row in rows]
    write_outputs(records, out)
    return records


def finished_twin(row: AblationRow, *, out: Path, header: dict) -> dict | None:
    """A finished result (with its ``key``) of another row that trains the identical model config with the same
    seed, data, depth and recipe overrides: e.g. Table 4's k=7 and Table 3's "1234" are one model."""
    from sasa.models.registry import resolve_config

    model, model_opt = row.model_kwargs(header["depth"])
    config = resolve_config(model, **model_opt)
    for path in sorted((out / "results").glob("*.json")):
        result = json.loads(path.read_text())
        if result.get("same_as") or any(result.get(k, {} if k == "overrides" else None) != header[k]
                                        for k in ("seed", "data", "depth", "overrides")):
            continue
        if resolve_config(result["model"], **result["model_opt"]) == config:
            return {**result, "key": path.stem}
    return None


def summarise(row: AblationRow, *, out: Path, seeds: int) -> dict:
    """The row's profile record plus top1_mean/top1_std/seeds from its result files."""
    record = profile_row(row)
    results = [json.loads((out / "results" / f"{row_key(row, seed)}.json").read_text()) for seed in range(seeds)]
    top1 = [r["top1"] for r in results]
    record.update(top1_mean=statistics.fmean(top1), top1_std=statistics.stdev(top1) if len(top1) > 1 else 0.0,
                  seeds=len(top1), train_seconds=sum(r["seconds"] for r in results),
                  trained_model=results[0]["model"], data=results[0]["data"])
    return record


CSV_FIELDS = ("table", "row", "description", "params", "flops", "paper_params", "paper_flops", "paper_top1",
              "top1_mean", "top1_std", "seeds")


def write_outputs(records: list[dict], out: Path) -> None:
    atomic_write_json(out / "ablation.json", records)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(records)
    atomic_write_text(out / "ablation.csv", buffer.getvalue())
    atomic_write_bytes(out / "ablation.png", plot(records))


def plot(records: list[dict]) -> bytes:
    """PNG: per table, our top-1 (mean ± std) against FLOPs and parameters; the paper's top-1 on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = sorted({r["table"] for r in records})
    fig, axes = plt.subplots(len(tables), 2, figsize=(10, 3.2 * len(tables)), squeeze=False)
    for axes_row, table in zip(axes, tables):
        rows = [r for r in records if r["table"] == table]
        for ax, key, unit, scale in ((axes_row[0], "flops", "GFLOPs", 1e9), (axes_row[1], "params", "params (M)", 1e6)):
            xs = [r[key] / scale for r in rows]
            ax.errorbar(xs, [r["top1_mean"] for r in rows], yerr=[r["top1_std"] for r in rows], fmt="o", color="C0",
                        label="ours (val top-1)")
            for x, r in zip(xs, rows):
                ax.annotate(r["row"] or "none", (x, r["top1_mean"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
            paper = ax.twinx()
            paper.plot(xs, [r["paper_top1"] for r in rows], "s", mfc="none", color="C1", label="paper (ImageNet top-1)")
            ax.set_xlabel(f"{unit}, ResNet-50 at 224")
            ax.ticklabel_format(axis="x", useOffset=False)  # rows 0.01M apart would show as "+1.803e1" offsets
            ax.set_ylabel("ours: top-1 (%)", color="C0")
            paper.set_ylabel("paper: top-1 (%)", color="C1")
            ax.set_title(f"Table {table}")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()
