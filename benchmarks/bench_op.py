"""Benchmark of the local attention op: every runnable backend vs the reference and a 3x3 conv.

Shapes (batch B=8, N=8 heads, D = C/8): the four ResNet stages at k=7 (56x56x64,
28x28x128, 14x14x256, 7x7x512) and k = 3, 7, 11 at 56x56x64. For each shape it times
  * every backend that can run the inputs (``explain_backend``), the reference included,
  * ``nn.Conv2d(C, C, 3, padding=1)`` on the same (B, C, H, W) activation,
for the forward (under ``no_grad``) and forward+backward (gradients for q, k, v and
rel_pos; for the conv, input and weights). All timings of one shape are interleaved
(round robin over the methods, ``--repeats`` rounds after one warm-up round) and the table
reports the best round ("min"); the JSON keeps min and median. Ratios are computed from
numbers measured in the same run: ``x conv`` (time / conv time, same pass),
``vs ref`` (reference time / time) and ``mem x conv`` (peak memory / conv peak memory).

Peak memory, fwd+bwd:
  * CUDA: ``torch.cuda.max_memory_allocated`` during the call minus what was allocated
    before it (inputs excluded).
  * CPU: the peak of live bytes of tensors allocated through PyTorch's CPU allocator during
    the call (torch.profiler with ``profile_memory=True``, replayed through its memory
    timeline: creations minus destructions, inputs excluded). Memory that kernels allocate
    outside PyTorch's allocator (the fused kernel's per-thread scratch, a few KB; oneDNN
    or MKL scratch buffers of the conv) is not counted. Measured in a separate, untimed
    pass because profiling slows the run.

Usage: python benchmarks/bench_op.py [--device cpu|cuda] [--repeats 5] [--quick]
       [--out bench_results/bench_op.json] [--threads T] [--clock wall|process] [--skip NAME ...]
On a shared (loaded) machine wall-clock times with several threads are dominated by
waiting for descheduled OpenMP threads; ``--threads 1 --clock process`` gives CPU-time
ratios that do not depend on the load.
``--quick`` runs only 56x56x64 k=7 and 7x7x512 with 2 repeats (and skips the reference
where it would take more than a few seconds).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

from _memory import peak_memory  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

import sasa.functional as SF  # noqa: E402

STAGES = [(56, 64), (28, 128), (14, 256), (7, 512)]
KERNELS = [3, 7, 11]


def configs(quick: bool):
    if quick:
        return [(56, 64, 7), (7, 512, 7)]
    out = [(s, c, 7) for s, c in STAGES]
    out += [(56, 64, k) for k in KERNELS if k != 7]
    return out


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


class Method:
    """One thing to time on one shape: forward() and fwd_bwd() closures."""

    def __init__(self, name, forward, fwd_bwd):
        self.name, self.forward, self.fwd_bwd = name, forward, fwd_bwd


def attention_method(name, batch, heads, size, channels, ks, device, dtype):
    dim = channels // heads
    gen = torch.Generator(device="cpu").manual_seed(0)
    make = lambda *shape: torch.randn(*shape, generator=gen, dtype=dtype).to(device)  # noqa: E731
    q = make(batch, heads, size, size, dim) * dim**-0.5
    k, v = make(batch, heads, size, size, dim), make(batch, heads, size, size, dim)
    rel = make(ks, ks, dim)
    grad_out = make(batch, heads, size, size, dim)
    leaves = [t.requires_grad_(True) for t in (q, k, v, rel)]

    def forward():
        with torch.no_grad():
            return SF.local_attention2d(q, k, v, kernel_size=ks, rel_pos=rel, backend=name)

    def fwd_bwd():
        out = SF.local_attention2d(q, k, v, kernel_size=ks, rel_pos=rel, backend=name)
        torch.autograd.grad(out, leaves, grad_out)

    runnable = dict(SF.explain_backend(q, k, v, kernel_size=ks, rel_pos=rel))
    return Method(name, forward, fwd_bwd), runnable


def packed_method(batch, heads, size, channels, ks, device, dtype):
    """The layout-native entry on the layer's (B, 3C, H, W) projection (None if this sasa lacks it)."""
    if not hasattr(SF, "local_attention2d_packed"):
        return None
    dim = channels // heads
    gen = torch.Generator(device="cpu").manual_seed(0)
    qkv = torch.randn(batch, 3 * channels, size, size, generator=gen, dtype=dtype).to(device).requires_grad_(True)
    rel = torch.randn(ks, ks, dim, generator=gen, dtype=dtype).to(device).requires_grad_(True)
    grad_out = torch.randn(batch, channels, size, size, generator=gen, dtype=dtype).to(device)

    def forward():
        with torch.no_grad():
            return SF.local_attention2d_packed(qkv, num_heads=heads, kernel_size=ks, rel_pos=rel, scale=dim**-0.5)

    def fwd_bwd():
        out = SF.local_attention2d_packed(qkv, num_heads=heads, kernel_size=ks, rel_pos=rel, scale=dim**-0.5)
        torch.autograd.grad(out, [qkv, rel], grad_out)

    return Method("packed", forward, fwd_bwd)


def conv_method(batch, size, channels, device, dtype):
    conv = nn.Conv2d(channels, channels, 3, padding=1).to(device, dtype)
    x = torch.randn(batch, channels, size, size, device=device, dtype=dtype, requires_grad=True)
    grad_out = torch.randn(batch, channels, size, size, device=device, dtype=dtype)
    params = [x, *conv.parameters()]

    def forward():
        with torch.no_grad():
            return conv(x)

    def fwd_bwd():
        torch.autograd.grad(conv(x), params, grad_out)

    return Method("conv3x3", forward, fwd_bwd)


def time_methods(methods, device, repeats, which, clock=time.perf_counter):
    """Interleaved rounds; returns {name: [seconds by `clock`]} and {name: [wall seconds]}."""
    samples = {m.name: [] for m in methods}
    wall = {m.name: [] for m in methods}
    for round_ in range(repeats + 1):  # round 0 is the warm-up
        for m in methods:
            fn = m.forward if which == "fwd" else m.fwd_bwd
            _sync(device)
            start, start_wall = clock(), time.perf_counter()
            fn()
            _sync(device)
            if round_ > 0:
                samples[m.name].append(clock() - start)
                wall[m.name].append(time.perf_counter() - start_wall)
    return samples, wall


def run(args, threads=0):
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    if threads:
        torch.set_num_threads(threads)
    dtype = torch.float32
    batch, heads = 8, 8
    repeats = 2 if args.quick and args.repeats is None else (args.repeats or 5)
    results = []
    for size, channels, ks in configs(args.quick):
        probe, runnable = attention_method("reference", batch, heads, size, channels, ks, device, dtype)
        names = [n for n, why in runnable.items() if why is None]
        skipped = {n: why for n, why in runnable.items() if why is not None}
        if args.quick and size * size * ks * ks > 56 * 56 * 49 and "reference" in names and len(names) > 1:
            names.remove("reference")
            skipped["reference"] = "skipped in --quick"
        if args.skip:
            for n in args.skip:
                if n in names:
                    names.remove(n)
                    skipped[n] = "skipped by --skip"
        methods = [attention_method(n, batch, heads, size, channels, ks, device, dtype)[0] for n in names]
        if "cpu_fused" in names:
            packed = packed_method(batch, heads, size, channels, ks, device, dtype)
            if packed is not None:
                methods.append(packed)
        methods.append(conv_method(batch, size, channels, device, dtype))
        del probe
        row = {"H": size, "W": size, "C": channels, "heads": heads, "D": channels // heads, "k": ks, "B": batch,
               "threads": torch.get_num_threads()}
        # the process (CPU) clock only measures speed with one thread
        use_process = args.clock == "process" and torch.get_num_threads() == 1
        row["clock"] = "process" if use_process else "wall"
        clock = time.process_time if use_process else time.perf_counter
        fwd, fwd_wall = time_methods(methods, device, repeats, "fwd", clock)
        fb, fb_wall = time_methods(methods, device, repeats, "fwd_bwd", clock)
        mem = {m.name: peak_memory(m.fwd_bwd, device) for m in methods} if not args.no_memory else {}
        row["methods"] = {
            m.name: {
                "fwd_min_s": min(fwd[m.name]),
                "fwd_median_s": statistics.median(fwd[m.name]),
                "fwd_bwd_min_s": min(fb[m.name]),
                "fwd_bwd_median_s": statistics.median(fb[m.name]),
                "fwd_wall_median_s": statistics.median(fwd_wall[m.name]),
                "fwd_bwd_wall_median_s": statistics.median(fb_wall[m.name]),
                "fwd_bwd_peak_bytes": mem.get(m.name),
            }
            for m in methods
        }
        row["skipped"] = skipped
        results.append(row)
        print_row(row)
        sys.stdout.flush()
    return results


def print_row(row):
    methods = row["methods"]
    conv = methods["conv3x3"]
    ref = methods.get("reference")
    title = (f"{row['H']}x{row['W']}x{row['C']}  k={row['k']}  (B={row['B']}, {row['heads']} heads of D={row['D']}; "
             f"{row['threads']} threads, {row['clock']} clock)")
    print(f"\n{title}")
    header = f"{'method':<11}{'fwd ms':>9}{'x conv':>8}{'vs ref':>8}{'fwd+bwd ms':>12}{'x conv':>8}{'vs ref':>8}{'peak MB':>10}{'mem x conv':>11}"
    print(header)
    print("-" * len(header))
    for name, m in methods.items():
        f, fb = m["fwd_min_s"], m["fwd_bwd_min_s"]
        vs_f = f"{ref['fwd_min_s'] / f:7.1f}x" if ref else "     - "
        vs_fb = f"{ref['fwd_bwd_min_s'] / fb:7.1f}x" if ref else "     - "
        mem = m["fwd_bwd_peak_bytes"]
        cmem = conv["fwd_bwd_peak_bytes"]
        mem_s = f"{mem / 2**20:10.1f}" if mem is not None else "         -"
        memx = f"{mem / cmem:10.1f}x" if mem is not None and cmem else "          -"
        print(
            f"{name:<11}{f * 1e3:9.1f}{f / conv['fwd_min_s']:7.2f}x{vs_f}{fb * 1e3:12.1f}"
            f"{fb / conv['fwd_bwd_min_s']:7.2f}x{vs_fb}{mem_s}{memx}"
        )
    for name, why in row["skipped"].items():
        print(f"  (not run: {name}: {why})")


def table(results):
    """Markdown: the fused op (public and layout-native entry) against the 3x3 conv, per shape and thread count."""
    lines = [
        "| shape | threads | clock | fwd ms | × conv | fwd+bwd ms | × conv | layout-native fwd / fwd+bwd ms "
        "| × conv | × faster than reference (fwd+bwd) | peak MB: fused / conv / reference |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results:
        methods = row["methods"]
        fused, conv = methods.get("cpu_fused") or methods.get("flex"), methods["conv3x3"]
        if fused is None:
            continue
        packed, ref = methods.get("packed"), methods.get("reference")
        shape = f"{row['H']}×{row['W']}×{row['C']}" + ("" if row["k"] == 7 else f", k={row['k']}")
        mb = lambda m: "-" if m is None or m["fwd_bwd_peak_bytes"] is None else f"{m['fwd_bwd_peak_bytes'] / 2**20:.1f}"  # noqa: E731
        native = native_x = "-"
        if packed:
            native = f"{packed['fwd_min_s'] * 1e3:.1f} / {packed['fwd_bwd_min_s'] * 1e3:.1f}"
            native_x = f"{packed['fwd_min_s'] / conv['fwd_min_s']:.2f} / {packed['fwd_bwd_min_s'] / conv['fwd_bwd_min_s']:.2f}"
        vs_ref = f"{ref['fwd_bwd_min_s'] / fused['fwd_bwd_min_s']:.0f}×" if ref else "-"
        lines.append(
            f"| {shape} | {row['threads']} | {'CPU' if row['clock'] == 'process' else 'wall'} "
            f"| {fused['fwd_min_s'] * 1e3:.1f} | {fused['fwd_min_s'] / conv['fwd_min_s']:.2f} "
            f"| {fused['fwd_bwd_min_s'] * 1e3:.1f} | {fused['fwd_bwd_min_s'] / conv['fwd_bwd_min_s']:.2f} "
            f"| {native} | {native_x} | {vs_ref} | {mb(fused)} / {mb(conv)} / {mb(ref)} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per shape (default 5, 2 with --quick)")
    parser.add_argument("--quick", action="store_true", help="two shapes, 2 repeats, reference skipped when slow")
    parser.add_argument("--threads", type=int, nargs="+", default=[0],
                        help="thread counts to run, one after the other (default: torch's)")
    parser.add_argument(
        "--clock",
        default="wall",
        choices=["wall", "process"],
        help="wall: perf_counter; process: CPU time of the process (robust on a shared machine; used "
        "only for 1-thread runs, several threads always use the wall clock)",
    )
    parser.add_argument("--skip", nargs="*", default=[], help="backend names not to run")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    parser.add_argument("--out", default=str(ROOT / "bench_results" / "bench_op.json"))
    args = parser.parse_args(argv)
    results = [row for threads in args.threads for row in run(args, threads)]
    meta = {
        "device": args.device,
        "cpu": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "threads": args.threads,
        "clock": args.clock,
        "command": "python benchmarks/bench_op.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "torch": torch.__version__,
        "repeats": args.repeats,
        "quick": args.quick,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "timing": "best and median of interleaved rounds after one warm-up round",
        "memory": "fwd+bwd peak of live tensor bytes above the inputs (CPU: profiler memory timeline; "
        "CUDA: max_memory_allocated)",
    }
    markdown = table(results)
    print("\n" + markdown)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"meta": meta, "results": results, "markdown": markdown}, indent=2))
    tmp.replace(out)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
