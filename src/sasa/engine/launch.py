"""One launcher for every task: a training from a task's pieces, single process or under torchrun.

A task supplies its options (a :class:`~sasa.engine.trainer.TrainConfig` subclass) and a
``prepare(options, ctx, progress) -> TrainingJob`` that loads its data and says how to build its
model; :func:`launch` does the rest, in this order:

1. join the process group (torchrun) or run as one process;
2. check the options and, on every rank, the run directory (a fresh one must be creatable and
   empty unless ``force``; a resumed one must be a run of this task) -- before any data is read;
3. ``prepare``: datasets, task, checkpoint metadata (a data problem stops here, nothing written);
4. seed, build the model, DDP-wrap it, make the loaders and the :class:`Trainer`;
5. barrier → rank 0 creates and locks the run directory and writes ``config.json`` → barrier;
6. resume (weights, optimizer, RNG, ...) or start, and :meth:`Trainer.fit`;
7. on a failure before the first completed epoch of a fresh run, remove what was written;
   leave the process group in every case.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from sasa.engine.distributed import (
    DistributedContext,
    barrier,
    cleanup_distributed,
    init_distributed,
    make_loader,
    wrap_model,
)
from sasa.engine.progress import ProgressReporter
from sasa.engine.run_dir import RunDir
from sasa.engine.trainer import Task, TrainConfig, Trainer, seed_everything
from sasa.errors import UserError


@dataclass
class TrainingJob:
    """What a task hands to :func:`launch`: its data, how to build its model, its step and metadata."""

    train_set: Dataset
    val_set: Dataset
    build_model: Callable[[], nn.Module]  # called after seeding, identically on every rank
    task: Task
    metadata: dict[str, Any]  # checkpoint metadata (sasa.engine.checkpoint schema)
    record: dict[str, Any] = field(default_factory=dict)  # more config.json entries (data paths, counts)
    collate_fn: Callable | None = None
    init_weights: Callable[[nn.Module], None] | None = None  # a fresh run only (e.g. pre-trained backbone weights)
    description: str = ""  # the line printed when a fresh training starts


@dataclass
class TrainingResult:
    rows: list[dict[str, Any]]  # every epoch's metrics (rank 0; [] on the others)
    best_value: float | None
    best_epoch: int | None
    seconds: float


def resume_options(options_type: type[TrainConfig], out: str | Path, given: dict[str, Any], *, task: str) -> TrainConfig:
    """The options of the run in ``out`` with the ``given`` ones that may change on resume."""
    run = RunDir.open_existing(out)
    saved = run.read_config()
    saved_task = saved.get("task", "detection" if "detector_config" in saved else "classification")
    if saved_task != task:
        raise UserError(f"{str(out)!r} is a {saved_task} run, not a {task} one; "
                        f"continue it with `sasa {'train' if saved_task == 'classification' else 'detect-train'} --resume`")
    done = run.completed_epochs()
    if given.get("epochs") is not None and given["epochs"] < done:
        raise UserError(f"--epochs {given['epochs']} is fewer than the {done} epochs {str(out)!r} has completed")
    return options_type.from_saved(saved.get("options", saved), given)


def launch(options: TrainConfig, prepare: Callable[..., TrainingJob], *, task: str, out: str | Path,
           resume: bool = False, force: bool = False) -> TrainingResult | None:
    """Train (or continue) ``task`` with ``options`` in run directory ``out``; see the module docstring.

    Returns the result on rank 0 and None on the other ranks.
    """
    if resume and force:
        raise UserError("--resume and --force exclude each other (--force starts the run again)")
    options.check_ready()
    ctx = init_distributed(options.device)
    try:
        return _launch(options, prepare, ctx, task=task, out=Path(out), resume=resume, force=force)
    finally:
        cleanup_distributed()


def _launch(options: TrainConfig, prepare, ctx: DistributedContext, *, task: str, out: Path, resume: bool,
            force: bool) -> TrainingResult | None:
    if options.batch_size % ctx.world_size:
        raise UserError(f"--batch-size {options.batch_size} is not divisible by the {ctx.world_size} processes")
    run = RunDir.open_existing(out) if resume else RunDir.create(out, force=force, create=False)
    if not ctx.is_main:
        warnings.filterwarnings("ignore")  # rank 0 reports (counts of skipped images are all-reduced)
    progress = ProgressReporter(enabled=ctx.is_main, quiet=options.quiet)
    if options.sync_bn and ctx.is_distributed and ctx.device.type != "cuda":
        progress.warn("--sync-bn has no effect on CPU (torch's SyncBatchNorm needs CUDA)")
    job = prepare(options, ctx, progress)

    seed_everything(options.seed)  # identical initial weights on every rank
    model = job.build_model()
    if job.init_weights is not None and not resume:  # a resumed run loads its own weights
        job.init_weights(model)
    model = wrap_model(model, ctx, sync_bn=options.sync_bn and ctx.device.type == "cuda")
    per_process = options.batch_size // ctx.world_size
    loader_options = dict(ctx=ctx, workers=options.workers, collate_fn=job.collate_fn)
    train_loader = make_loader(job.train_set, batch_size=per_process, train=True, seed=options.seed, **loader_options)
    eval_per_process = max(1, (options.eval_batch_size or options.batch_size) // ctx.world_size)
    val_loader = make_loader(job.val_set, batch_size=eval_per_process, train=False, **loader_options)
    trainer = Trainer(model=model, task=job.task, train_loader=train_loader, val_loader=val_loader, config=options,
                      run=run, ctx=ctx, progress=progress, metadata=job.metadata)

    barrier(ctx)  # every rank has checked everything before rank 0 writes
    if ctx.is_main and resume:
        run.lock()
    elif ctx.is_main:
        RunDir.create(out, force=force)
    config = {"task": task, "options": options.to_dict(), "model_config": job.metadata.get("model_config"),
              "world_size": ctx.world_size, **job.record,
              "torch": torch.__version__}
    try:
        if resume:
            done = trainer.resume()
            progress.info(f"resuming {run.path} after epoch {done}/{options.epochs}")
        else:
            progress.info(job.description)
        if ctx.is_main:
            run.write_config(config)  # on resume too: a changed --epochs is kept for the next resume
        barrier(ctx)
        if not resume:  # (a resumed run continues every rank's saved RNG stream)
            seed_everything(options.seed + ctx.rank)  # each rank its own augmentation stream
        start = time.perf_counter()
        rows = trainer.fit()
    except BaseException as error:
        if not resume and ctx.is_main and not run.state.is_file():
            run.discard()
            if isinstance(error, UserError):
                raise UserError(f"{error} (no epoch completed; {str(out)!r} was removed)") from None
        raise
    if not ctx.is_main:
        return None
    return TrainingResult(rows=rows, best_value=trainer.best_value, best_epoch=trainer.best_epoch,
                          seconds=time.perf_counter() - start)

