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

and :func:`~sasa.engine.launch.launch` runs it: a task hands over its options (a :class:`TrainConfig`
subclass) and a ``prepare(options, ctx, progress) -> TrainingJob`` (datasets, model builder, task,
checkpoint metadata); the launcher does distributed set-up, run-directory checks and locking, config.json,
seeding, DDP, loaders, resume and the epoch loop. ``sasa.classification.train`` and
``sasa.detection.train`` are the two users. The engine imports no task package and no model.

Modules:

* :mod:`~sasa.engine.io` -- ``atomic_write_bytes/text/json`` (temp file + fsync + os.replace),
  ``save_weights/load_weights`` (safetensors with JSON-encoded metadata), ``save_state/load_state``
  (torch.save of the resumable state, loaded with ``weights_only=True``).
* :mod:`~sasa.engine.run_dir` -- :class:`RunDir`: the run directory layout (config.json, metrics.csv,
  metrics.jsonl, curves.png, last/best.safetensors, state.pt), refuse-to-overwrite / ``force`` / resume,
  ``lock()`` (flock on DIR/.lock: one training process per run directory), ``discard()`` (a failed start).
* :mod:`~sasa.engine.distributed` -- :class:`DistributedContext`, ``init_distributed``,
  ``resolve_device``, ``make_loader`` (DistributedSampler for training, in a single process too;
  an unpadded shard sampler for evaluation), ``all_reduce_sums``, ``broadcast_object``, ``barrier``,
  ``wrap_model`` (SyncBatchNorm + DDP), ``unwrap_model``, ``cleanup_distributed``.
* :mod:`~sasa.engine.options` -- :class:`Options` and :func:`option`: dataclass fields that carry their
  flag help, value check and resume rule (``FIXED``, ``CHANGE``, ``SESSION``); recipes are instances.
* :mod:`~sasa.engine.launch` -- :func:`launch`, :class:`TrainingJob`, :func:`resume_options`.
* :mod:`~sasa.engine.checkpoint` -- the one checkpoint metadata schema (:func:`checkpoint_metadata`,
  :func:`read_checkpoint`) that each task's ``load_checkpoint`` reads.
* :mod:`~sasa.engine.progress` -- :class:`ProgressReporter`: tqdm bar per epoch on a TTY, plain lines
  otherwise, nothing but the per-epoch summary line with ``quiet``; silent on ranks other than 0.
* :mod:`~sasa.engine.trainer` -- :class:`TrainConfig`, :class:`StepResult`, :class:`Task`,
  :class:`Trainer`, and the pieces: ``build_optimizer`` (SGD-Nesterov/AdamW, PyTorch's fused kernels on
  CPU/CUDA, no decay on norms and biases), ``build_scheduler`` (timm CosineLRScheduler with linear warm-up,
  per step or epoch), ``autocast_factory`` (bf16 on CPU, fp16 on CUDA), ``seed_everything``, ``rng_state``.

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
from sasa.engine.checkpoint import checkpoint_metadata, load_state_dict, read_checkpoint
from sasa.engine.io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    check_output_dir,
    check_output_file,
    load_state,
    load_weights,
    save_state,
    save_weights,
)
from sasa.engine.launch import TrainingJob, TrainingResult, launch, resume_options
from sasa.engine.options import Options, option
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
    "save_weights", "check_output_dir", "check_output_file", "checkpoint_metadata", "load_state_dict",
    "read_checkpoint", "TrainingJob", "TrainingResult", "launch", "resume_options", "Options", "option",
    "ProgressReporter", "RunDir", "StepResult", "Task", "TrainConfig", "Trainer",
    "autocast_factory", "build_optimizer", "build_scheduler", "seed_everything",
]
