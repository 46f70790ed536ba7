"""DDP under ``torchrun`` in a few functions (nanoGPT-style), and a no-op single process otherwise.

``torchrun --nproc_per_node=N -m sasa train ...`` sets RANK / LOCAL_RANK / WORLD_SIZE;
:func:`init_distributed` reads them and joins the process group (gloo on CPU, nccl on CUDA).
Only the main process (rank 0) writes files or prints.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Iterator, Mapping, Sized

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` → ``cuda:LOCAL_RANK`` if a GPU is visible, else cpu; ``"cuda"`` without a GPU is an error."""
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but no CUDA GPU is available; use --device cpu")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def init_distributed(device: str = "auto") -> DistributedContext:
    """Join the torchrun process group if WORLD_SIZE > 1; otherwise a single-process context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistributedContext(rank=rank, local_rank=local_rank, world_size=world_size, device=resolved)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistributedContext) -> None:
    if ctx.is_distributed:
        dist.barrier()


def all_reduce_sums(values: Mapping[str, float], ctx: DistributedContext) -> dict[str, float]:
    """Sum each value over all processes (float64, so counts stay exact)."""
    keys = sorted(values)
    if not ctx.is_distributed or not keys:
        return {key: float(values[key]) for key in keys}
    device = ctx.device if ctx.device.type == "cuda" else torch.device("cpu")
    tensor = torch.tensor([float(values[key]) for key in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return dict(zip(keys, tensor.tolist()))


def broadcast_object(obj, ctx: DistributedContext):
    """rank 0's ``obj`` on every process (e.g. an error message, so all ranks stop together)."""
    if not ctx.is_distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` in order: every sample exactly once over all ranks
    (unlike DistributedSampler, no padding duplicates), so all-reduced eval sums are exact."""

    def __init__(self, dataset: Sized, ctx: DistributedContext) -> None:
        self.indices = range(ctx.rank, len(dataset), ctx.world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def make_loader(
    dataset: Dataset, *, batch_size: int, train: bool, ctx: DistributedContext, seed: int = 0,
    workers: int = 0, collate_fn=None, drop_last: bool | None = None,
) -> DataLoader:
    """Train loader: shuffled by ``DistributedSampler(seed)`` (also in a single process, so the order is a
    function of seed and epoch, call ``set_epoch``); eval loader: :class:`ShardSampler`, in order.
    ``batch_size`` is per process."""
    if train:
        sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed)
        per_rank = len(sampler)  # ceil(len / world): the sampler pads with repeats
        drop_last = per_rank > batch_size if drop_last is None else drop_last
        if not drop_last and batch_size > 1 and per_rank % batch_size == 1:
            # BatchNorm cannot train on one image whose map has shrunk to 1x1 ("Expected more than 1 value
            # per channel when training"), so a last batch of one image is dropped, not trained on
            drop_last = True
            warnings.warn(
                f"the last training batch would hold one image ({per_rank} images per process, batch {batch_size}): "
                "it is dropped each epoch (BatchNorm cannot train on a batch of one)", UserWarning, stacklevel=2,
            )
    else:
        sampler, drop_last = ShardSampler(dataset, ctx), False
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate_fn,
        drop_last=drop_last, pin_memory=ctx.device.type == "cuda",
        # no persistent workers: fresh workers each epoch take their seeds from the (checkpointed) torch RNG
    )


def broadcast_module(module: nn.Module, ctx: DistributedContext) -> None:
    """Overwrite every rank's parameters and buffers with rank 0's (in place; a no-op in one process).

    Under DDP the parameters agree but the BatchNorm running statistics (and an EMA of them) are each
    rank's own; rank 0's are the ones saved, so they are the ones every rank must evaluate."""
    if not ctx.is_distributed:
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)


def wrap_model(model: nn.Module, ctx: DistributedContext, *, sync_bn: bool = False) -> nn.Module:
    """Move to the device; under DDP optionally convert BatchNorm to SyncBatchNorm, then wrap in DDP."""
    model = model.to(ctx.device)
    if not ctx.is_distributed:
        return model
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap_model(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model

