"""Throughput and peak memory of attention ResNets vs. their conv baselines.

For each model: inference and train-step (forward + backward + SGD step) images/s and peak memory,
at --img-size (default 224) and --batch-size (default 8 on CPU, 64 on CUDA). Every figure is
measured in this run and the table prints attention/conv ratios for each depth.

Peak memory: of one step after the warm-up (model, input and optimizer state already allocated),
in a separate untimed pass: activations, gradients and temporaries (see ``_memory.py``).

    python benchmarks/bench_models.py [--models resnet26 sa_resnet26 ...] [--device cuda] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import sasa
from _memory import peak_memory

DEFAULT_MODELS = ["resnet26", "sa_resnet26", "resnet50", "sa_resnet50"]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(name: str, *, mode: str, device: str, batch_size: int, img_size: int, warmup: int, repeats: int) -> dict:
    """Median seconds per step and peak memory of one model in one mode ("train" or "infer")."""
    torch.manual_seed(0)
    model = sasa.create_model(name, num_classes=1000).to(device)
    x = torch.randn(batch_size, 3, img_size, img_size, device=device)
    y = torch.randint(0, 1000, (batch_size,), device=device)
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

    step()  # first step allocates optimizer state and compiles/caches kernels
    for _ in range(warmup - 1):
        step()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    peak = peak_memory(step, torch.device(device))
    seconds = statistics.median(times)
    return {"model": name, "mode": mode, "seconds": seconds, "images_per_s": batch_size / seconds, "peak_bytes": max(peak, 0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench_results/bench_models.json"))
    args = parser.parse_args()
    batch_size = args.batch_size or (8 if args.device == "cpu" else 64)
    rows = []
    for name in args.models:
        for mode in ("infer", "train"):
            row = measure(
                name=name, mode=mode, device=args.device, batch_size=batch_size, img_size=args.img_size,
                warmup=args.warmup, repeats=args.repeats,
            )
            rows.append(row)
            print(f"  measured {name:<14} {mode:<5} {row['images_per_s']:8.2f} img/s  {row['peak_bytes'] / 2**20:8.0f} MiB", flush=True)

    by_key = {(r["model"], r["mode"]): r for r in rows}
    print(f"\n{'model':<14} {'mode':<6} {'img/s':>8} {'peak MiB':>9} {'× conv img/s':>13} {'× conv mem':>11}")
    for row in rows:
        baseline = by_key.get((row["model"].removeprefix("sa_").removesuffix("_convstem"), row["mode"]))
        ratio_speed = ratio_mem = ""
        if baseline is not None and baseline is not row:
            ratio_speed = f"{row['images_per_s'] / baseline['images_per_s']:.2f}"
            ratio_mem = f"{row['peak_bytes'] / max(baseline['peak_bytes'], 1):.2f}"
            row["speed_vs_conv"], row["memory_vs_conv"] = float(ratio_speed), float(ratio_mem)
        print(
            f"{row['model']:<14} {row['mode']:<6} {row['images_per_s']:8.2f} {row['peak_bytes'] / 2**20:9.0f} "
            f"{ratio_speed:>13} {ratio_mem:>11}"
        )
    machine = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "backends": sasa.functional.available_backends(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "batch_size": batch_size, "img_size": args.img_size, "rows": rows}, indent=2))
    print(f"\nwrote {args.out}  ({machine})")


if __name__ == "__main__":
    main()
