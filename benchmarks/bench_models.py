"""Throughput and peak memory of attention ResNets vs. their conv baselines.

For each model and thread count: inference (eval, ``inference_mode``) images/s at --batch-size and at
batch 1, train-step (forward + backward + SGD step) images/s at --batch-size, and the train step's
peak memory, at --img-size (default 224). Every figure is measured in this run; the table prints
attention/conv ratios for each depth and the 2-vs-1-thread speed-ups.

Timing: each step is timed with the wall clock and with the process CPU clock; the median of
--repeats steps after --warmup steps is kept for both. With 1 thread the CPU clock does not depend on
the load of a shared machine (the default ``--clock process``); with several threads only the wall
clock measures a speed-up (and includes time lost to descheduled threads on a loaded machine).

Peak memory: of one train step after the warm-up (model, input and optimizer state already
allocated), in a separate untimed pass: activations, gradients and temporaries (see ``_memory.py``).

    python benchmarks/bench_models.py [--models resnet26 sa_resnet26 ...] [--threads 1 2]
        [--clock process|wall] [--device cuda] [--out bench_results/bench_models.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch

from _memory import peak_memory  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

import sasa  # noqa: E402

DEFAULT_MODELS = ["resnet26", "sa_resnet26", "resnet50", "sa_resnet50"]
MODES = ("infer", "infer_b1", "train")


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(name: str, *, mode: str, device: str, batch_size: int, img_size: int, warmup: int, repeats: int,
            memory: bool) -> dict:
    """Median seconds per step (wall and CPU) and peak memory of one model in one mode."""
    torch.manual_seed(0)
    model = sasa.create_model(name, num_classes=1000).to(device)
    batch = 1 if mode == "infer_b1" else batch_size
    x = torch.randn(batch, 3, img_size, img_size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train(mode == "train")

    def step() -> None:
        if mode == "train":
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        else:
            with torch.inference_mode():
                model(x)

    for _ in range(max(warmup, 1)):  # the first step allocates optimizer state and builds kernels
        step()
    _sync(device)
    wall, cpu = [], []
    for _ in range(repeats * (3 if mode == "infer_b1" else 1)):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        step()
        _sync(device)
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    peak = peak_memory(step, torch.device(device)) if memory else None
    return {
        "model": name, "mode": mode, "batch_size": batch, "threads": torch.get_num_threads(),
        "wall_s": statistics.median(wall), "cpu_s": statistics.median(cpu),
        "wall_all_s": wall, "cpu_all_s": cpu, "peak_bytes": None if peak is None else max(peak, 0),
    }


def images_per_s(row: dict, clock: str) -> float:
    seconds = row["cpu_s"] if clock == "process" and row["threads"] == 1 else row["wall_s"]
    return row["batch_size"] / seconds


def baseline_of(name: str) -> str:
    """The conv ResNet of the same depth: sa_resnet26_convstem, axial_resnet26_s -> resnet26."""
    match = re.search(r"resnet\d+", name)
    return match.group() if match else name


def table(rows: list[dict], clock: str) -> str:
    """Markdown: per model and thread count, img/s, peak memory and ratios to the conv baseline."""
    by_key = {(r["model"], r["mode"], r["threads"]): r for r in rows}
    models = list(dict.fromkeys(r["model"] for r in rows))
    threads = sorted({r["threads"] for r in rows})
    lines = [
        "| model | threads | clock | train img/s | infer img/s (batch {b}) | infer img/s (batch 1) | train peak MiB "
        "| × conv: train | × conv: infer | × conv: infer b1 | × conv: memory |".format(
            b=next(r["batch_size"] for r in rows if r["mode"] == "train")),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in models:
        for t in threads:
            got = {m: by_key.get((name, m, t)) for m in MODES}
            if not all(got.values()):
                continue
            base = {m: by_key.get((baseline_of(name), m, t)) for m in MODES}
            speed = {m: images_per_s(got[m], clock) for m in MODES}
            ratios = ["", "", "", ""]
            if baseline_of(name) != name and all(base.values()):
                ratios = [f"{speed[m] / images_per_s(base[m], clock):.2f}" for m in ("train", "infer", "infer_b1")]
                mem, base_mem = got["train"]["peak_bytes"], base["train"]["peak_bytes"]
                ratios.append(f"{mem / base_mem:.2f}" if mem and base_mem else "")
            mem = got["train"]["peak_bytes"]
            used = "CPU" if clock == "process" and t == 1 else "wall"
            lines.append(
                f"| {name} | {t} | {used} | {speed['train']:.2f} | {speed['infer']:.2f} | {speed['infer_b1']:.2f} | "
                + (f"{mem / 2**20:.0f}" if mem else "-") + " | " + " | ".join(ratios) + " |"
            )
    if len(threads) > 1:
        lines += ["", "| model | " + " | ".join(f"{m}: wall {threads[0]}→{t} threads" for t in threads[1:] for m in MODES) + " |",
                  "|---|" + "---|" * (len(MODES) * (len(threads) - 1))]
        for name in models:
            cells = []
            for t in threads[1:]:
                for m in MODES:
                    a, b = by_key.get((name, m, threads[0])), by_key.get((name, m, t))
                    cells.append(f"{a['wall_s'] / b['wall_s']:.2f}×" if a and b else "")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--threads", type=int, nargs="+", default=[0], help="thread counts to run (0: torch's default)")
    parser.add_argument("--clock", default="process", choices=["process", "wall"],
                        help="clock of the 1-thread figures (several threads always use the wall clock)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    parser.add_argument("--out", type=Path, default=ROOT / "bench_results" / "bench_models.json")
    args = parser.parse_args(argv)
    batch_size = args.batch_size or (8 if args.device == "cpu" else 64)
    rows = []
    for threads in args.threads:
        if threads:
            torch.set_num_threads(threads)
        for name in args.models:
            for mode in MODES:
                row = measure(name, mode=mode, device=args.device, batch_size=batch_size, img_size=args.img_size,
                              warmup=args.warmup, repeats=args.repeats, memory=mode == "train" and not args.no_memory)
                rows.append(row)
                mem = "" if row["peak_bytes"] is None else f"{row['peak_bytes'] / 2**20:8.0f} MiB"
                print(f"  {row['threads']} thr  {name:<16} {mode:<9} wall {row['wall_s'] * 1e3:8.1f} ms  "
                      f"cpu {row['cpu_s'] * 1e3:8.1f} ms  {mem}", flush=True)
    markdown = table(rows, args.clock)
    print("\n" + markdown)
    machine = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__, "backends": sasa.functional.available_backends(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine, "batch_size": batch_size, "img_size": args.img_size, "clock": args.clock,
               "command": "python benchmarks/bench_models.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "rows": rows, "markdown": markdown}
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(args.out)
    print(f"\nwrote {args.out}  ({machine})")


if __name__ == "__main__":
    main()
