"""Peak memory of one call, shared by the benchmarks.

CUDA: ``torch.cuda.max_memory_allocated`` during the call minus what was allocated before it.
CPU: the peak of live bytes of the blocks that PyTorch's CPU allocator hands out during the call, replayed
from the allocation and free events that torch.profiler (``profile_memory=True``) records, in time order and
matched by address; blocks allocated before the call and their frees are left out. Scratch memory that
kernels allocate outside PyTorch's allocator (oneDNN/MKL workspaces, the fused kernel's per-thread buffers)
is not counted.

(Earlier versions replayed the profiler's tensor-level ``_memory_profile().timeline``; it misses the frees
of tensors recomputed under ``torch.utils.checkpoint``, so gradient checkpointing showed no drop: sa_resnet50,
224, batch 8: 961 vs 966 MiB there, 819 vs 310 MiB from the allocator's own events.)
"""
from __future__ import annotations

import torch


def _allocations(prof) -> list[tuple[int, int, int]]:
    """(time ns, address, signed bytes) of every CPU allocator event the profiler recorded, in time order."""
    from torch._C._profiler import _EventType

    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.typed[0] == _EventType.Allocation and node.typed[1].device.type == "cpu":
            events.append((node.start_time_ns, node.typed[1].ptr, node.typed[1].alloc_size))
    return sorted(events)


def peak_memory(fn, device) -> int:
    """Peak bytes allocated during fn() above what was live before (see module docstring)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    blocks: dict[int, int] = {}  # address -> bytes of the blocks allocated during the call
    for _, address, size in _allocations(prof):
        if size > 0:
            blocks[address] = size
            live += size
            peak = max(peak, live)
        elif address in blocks:
            live -= blocks.pop(address)
    return peak
