"""Peak memory of one call, shared by the benchmarks.

CUDA: ``torch.cuda.max_memory_allocated`` during the call minus what was allocated before it.
CPU: the peak of live bytes of tensors allocated through PyTorch's CPU allocator during the call
(torch.profiler with ``profile_memory=True``, replayed through its memory timeline: creations minus
destructions; what was live before the call is excluded). Scratch memory that kernels allocate
outside PyTorch's allocator (oneDNN/MKL workspaces, the fused kernel's per-thread buffers) is not
counted.
"""
from __future__ import annotations

import torch


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

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        fn()
    live = peak = 0
    sizes: dict = {}
    for _, action, key, size in prof._memory_profile().timeline:
        name = getattr(action, "name", str(action))
        if name == "CREATE":
            sizes[key] = size
            live += size
        elif name == "DESTROY" and key in sizes:
            live -= sizes.pop(key)
        elif name == "INCREMENT_VERSION":
            continue
        peak = max(peak, live)
    return peak
