"""torch.compile vs eager step times of sa_resnet26, and the peak-memory drop of gradient checkpointing.

compile: one thread, process CPU clock (independent of other load on a shared machine; --device cuda: wall
time between synchronisations), median of
--repeats steps after the compile and --warmup steps; train step = forward + backward + SGD step,
inference = eval forward under ``inference_mode``; the compiled model is
``torch.compile(model, fullgraph=True, dynamic=True)`` (inductor; ``--static``: ``dynamic=False``). Both are
measured in this run.

checkpointing: peak memory (``_memory.peak_memory``) of one train step of --memory-model at 224,
batch 8, with and without ``set_grad_checkpointing(True)``.

onnx: inference of sa_resnet26 at --onnx-img-size (224), batch 1 and 8, PyTorch eager (eval, ``inference_mode``)
vs onnxruntime's CPU provider on the file ``sasa.export.export_onnx`` writes; one thread each (ORT:
intra_op_num_threads=1), process CPU time, median of --repeats runs after --warmup; the same random weights.

    python benchmarks/bench_toolbox.py [--img-size 112] [--batch-size 8] [--skip-compile] [--skip-memory] [--skip-onnx] [--static]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _memory import peak_memory  # noqa: E402

import sasa  # noqa: E402


def _median_seconds(step, warmup: int, repeats: int, device: torch.device) -> float:
    """Median time of ``step()``: process CPU time on CPU; on CUDA wall time between synchronisations."""
    cuda = device.type == "cuda"
    clock = time.perf_counter if cuda else time.process_time
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = clock()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(clock() - start)
    return statistics.median(times)


def bench_compile(args) -> None:
    device = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    target = torch.randint(0, 10, (args.batch_size,), device=device)
    results = {}
    for mode in ("eager", "compiled"):
        model = sasa.create_model("sa_resnet26", num_classes=10).to(device)
        runner = torch.compile(model, fullgraph=True, dynamic=not args.static) if mode == "compiled" else model
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

        def train_step():
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(runner(x), target).backward()
            optimizer.step()

        def infer_step():
            with torch.inference_mode():
                runner(x)

        model.train()
        start = time.perf_counter()
        train_step()  # compiles (compiled mode)
        compile_train = time.perf_counter() - start
        train = _median_seconds(train_step, args.warmup, args.repeats, device)
        model.eval()
        start = time.perf_counter()
        infer_step()
        compile_infer = time.perf_counter() - start
        infer = _median_seconds(infer_step, args.warmup, args.repeats, device)
        results[mode] = (train, infer)
        print(f"{mode:9s} train step {1000 * train:8.1f} ms  inference {1000 * infer:8.1f} ms  "
              f"(first call: {compile_train:.0f} s / {compile_infer:.0f} s wall)", flush=True)
    (train_e, infer_e), (train_c, infer_c) = results["eager"], results["compiled"]
    print(f"compiled/eager time: train {train_c / train_e:.2f}, inference {infer_c / infer_e:.2f} "
          f"(sa_resnet26, batch {args.batch_size}, {args.img_size}x{args.img_size}, "
          f"{_device_name(device) + ', wall time' if device.type == 'cuda' else '1 thread, CPU time'}, "
          f"{'static' if args.static else 'dynamic'} shapes)")


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def bench_memory(args) -> None:
    device = torch.device(args.device)
    peaks = {}
    for enable in (False, True):
        torch.manual_seed(0)
        model = sasa.create_model(args.memory_model, num_classes=1000).train().to(device)
        model.set_grad_checkpointing(enable)
        x = torch.randn(8, 3, 224, 224, device=device)
        target = torch.randint(0, 1000, (8,), device=device)

        def step():
            model.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), target).backward()

        step()  # warm-up: gradients allocated once, as in the timed benchmarks
        peaks[enable] = peak_memory(step, device)
        print(f"{args.memory_model} train step ({_device_name(device)}), batch 8, 224: grad checkpointing {enable}: peak "
              f"{peaks[enable] / 2**20:.0f} MiB", flush=True)
    print(f"checkpointing peak / plain peak: {peaks[True] / peaks[False]:.2f}")


def bench_onnx(args) -> None:
    import tempfile

    import onnxruntime

    from sasa.export import export_onnx

    torch.manual_seed(0)
    model = sasa.create_model("sa_resnet26", num_classes=1000).eval()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory() as directory:
        path = export_onnx(model, Path(directory) / "sa_resnet26.onnx", img_size=args.onnx_img_size)
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for batch in (1, 8):
        x = torch.randn(batch, 3, args.onnx_img_size, args.onnx_img_size)
        feed = {"images": x.numpy()}

        def eager():
            with torch.inference_mode():
                return model(x)

        error = float((torch.from_numpy(session.run(None, feed)[0]) - eager()).abs().max())
        times = {name: _median_seconds(step, args.warmup, args.repeats, torch.device("cpu"))
                 for name, step in (("eager", eager), ("onnxruntime", lambda: session.run(None, feed)))}
        print(f"sa_resnet26 inference, batch {batch}, {args.onnx_img_size}x{args.onnx_img_size}, 1 thread: "
              f"PyTorch eager {1000 * times['eager']:.0f} ms, onnxruntime {1000 * times['onnxruntime']:.0f} ms "
              f"(onnxruntime/eager {times['onnxruntime'] / times['eager']:.2f}; max |logit difference| {error:.1e})",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--img-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-model", default="sa_resnet50")
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-onnx", action="store_true")
    parser.add_argument("--static", action="store_true",
                        help="compile with dynamic=False (inductor in torch 2.14.1 fails on the dynamic train graph)")
    parser.add_argument("--onnx-img-size", type=int, default=224)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="compile and memory parts (ONNX: CPU)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not args.skip_memory:
        bench_memory(args)
    if not args.skip_onnx:
        bench_onnx(args)
    if not args.skip_compile:
        bench_compile(args)


if __name__ == "__main__":
    main()
