"""Reusable training machinery for every task (``sasa.classification``, ``sasa.detection``).

A task plugs into :class:`Trainer` by implementing two methods (see :class:`Task`)::

    class MyTask:
        best_metric = "val_top1"          # row key that picks best.safetensors
        best_mode = "max"                 # or "min"
        def train_step(self, model, batch, device) -> StepResult | None:
            ...                           # forward under the trainer's autocast; return the mean loss,
            return StepResult(loss, batch_size=n, sums={"loss": loss.item() * n, "acc": 100 * correct})
        def evaluate(self, model, loader, ctx, autocast) -> dict[str, float]:
            ...                           # this rank's shard; reduce with all_reduce_sums(sums, ctx)
            return {"val_loss": ..., "val_top1": ...}

and a command wires it up (``sasa.cli.train_cmd`` is the worked example)::

    ctx = init_distributed(args.device)                    # torchrun env vars -> DDP (gloo CPU / nccl CUDA)
    RunDir.create(out, force=..., create=False)             # every rank checks (refuses an existing run)
    barrier(ctx)                                            # ... before rank 0 writes anything
    run = RunDir.create(out, force=...) if ctx.is_main else RunDir(out)   # rank 0 creates + locks it
    # resume: run = RunDir.open_existing(out); rank 0: run.lock()
    seed_everything(seed); model = wrap_model(build(), ctx, sync_bn=...)
    train_loader = make_loader(train_set, batch_size=b, train=True, ctx=ctx, seed=seed, collate_fn=...)
    val_loader = make_loader(val_set, batch_size=b, train=False, ctx=ctx)
    seed_everything(seed + ctx.rank)
    trainer = Trainer(model=model, task=task, train_loader=..., val_loader=..., config=TrainConfig(...),
                      run=run, ctx=ctx, progress=ProgressReporter(enabled=ctx.is_main, quiet=...),
                      metadata={"model": name, "num_classes": ..., ...})  # stored in the safetensors
    if resuming: trainer.resume()
    rows = trainer.fit()
    cleanup_distributed()

Modules:

* :mod:`~sasa.engine.io` -- ``atomic_write_bytes/text/json`` (temp file + fsync + os.replace),
  ``save_weights/load_weights`` (safetensors with JSON-encoded metadata), ``save_state/load_state``
  (torch.save of the resumable state, loaded with ``weights_only=True``).
* :mod:`~sasa.engine.run_dir` -- :class:`RunDir`: the run directory layout (config.json, metrics.csv,
  metrics.jsonl, curves.png, last/best.safetensors, state.pt), refuse-to-overwrite / ``force`` / resume,
  ``lock()`` (flock on DIR/.lock: one training process per run directory).
* :mod:`~sasa.engine.distributed` -- :class:`DistributedContext`, ``init_distributed``,
  ``resolve_device``, ``make_loader`` (DistributedSampler for training, in a single process too;
  an unpadded shard sampler for evaluation), ``all_reduce_sums``, ``broadcast_object``, ``barrier``,
  ``wrap_model`` (SyncBatchNorm + DDP), ``unwrap_model``, ``cleanup_distributed``.
* :mod:`~sasa.engine.progress` -- :class:`ProgressReporter`: tqdm bar per epoch on a TTY, plain lines
  otherwise, nothing but the per-epoch summary line with ``quiet``; silent on ranks other than 0.
* :mod:`~sasa.engine.trainer` -- :class:`TrainConfig`, :class:`StepResult`, :class:`Task`,
  :class:`Trainer`, and the pieces: ``build_optimizer`` (SGD-Nesterov/AdamW, no decay on norms and
  biases), ``build_scheduler`` (timm CosineLRScheduler with linear warm-up, per step or epoch),
  ``autocast_factory`` (bf16 on CPU, fp16 on CUDA), ``seed_everything``, ``rng_state``.

Checkpoint protocol (each file atomic): after every epoch rank 0 writes last.safetensors, then
best.safetensors if the best metric improved, metrics.jsonl/csv, curves.png, and finally state.pt,
the commit point. ``Trainer.resume`` restores weights, optimizer, scheduler position, AMP scaler, EMA,
every rank's RNG state and the metric rows, and continues after the last committed epoch.
"""
from sasa.engine.distributed import (
    DistributedContext,
    ShardSampler,
    all_reduce_sums,
    barrier,
    broadcast_object,
    cleanup_distributed,
    init_distributed,
    make_loader,
    resolve_device,
    unwrap_model,
    wrap_model,
)
from sasa.engine.io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    load_state,
    load_weights,
    save_state,
    save_weights,
)
from sasa.engine.progress import ProgressReporter
from sasa.engine.run_dir import RunDir
from sasa.engine.trainer import (
    StepResult,
    Task,
    TrainConfig,
    Trainer,
    autocast_factory,
    build_optimizer,
    build_scheduler,
    seed_everything,
)

__all__ = [
    "DistributedContext", "ShardSampler", "all_reduce_sums", "barrier", "broadcast_object", "cleanup_distributed",
    "init_distributed", "make_loader", "resolve_device", "unwrap_model", "wrap_model",
    "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "load_state", "load_weights", "save_state",
    "save_weights", "ProgressReporter", "RunDir", "StepResult", "Task", "TrainConfig", "Trainer",
    "autocast_factory", "build_optimizer", "build_scheduler", "seed_everything",
]
