"""A generic epoch loop: the task says what a step and an evaluation are, the trainer does the rest.

The rest is: SGD-Nesterov / AdamW with no weight decay on norms and biases, timm's cosine schedule
with linear warm-up (stepped per iteration or per epoch), AMP (bf16 autocast on CPU, fp16 +
GradScaler on CUDA), optional gradient clipping and EMA of the weights (timm ModelEmaV3), DDP-aware
metric reduction, progress output, and per-epoch checkpoints in a :class:`~sasa.engine.RunDir`
(``last.safetensors``, ``best.safetensors``, ``metrics.*``, ``curves.png`` and, last, ``state.pt``)
from which :meth:`Trainer.resume` continues exactly after the last completed epoch.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import random
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Mapping, Protocol

import numpy as np
import torch
import torch.distributed as dist
from timm.scheduler import CosineLRScheduler
from torch import nn
from torch.utils.data import DataLoader

from sasa.engine.distributed import (
    DistributedContext,
    all_reduce_sums,
    barrier,
    broadcast_module,
    set_epoch,
    unwrap_model,
)
from sasa.engine.options import CHANGE, FRACTION, NON_NEGATIVE, POSITIVE, SESSION, Options, option
from sasa.engine.io import load_state, save_state, save_weights
from sasa.engine.progress import ProgressReporter, format_metrics
from sasa.engine.run_dir import RunDir
from sasa.errors import UserError

AMP_DTYPES = ("auto", "bfloat16", "float16")

Autocast = Callable[[], ContextManager]


@dataclass(kw_only=True)
class TrainConfig(Options):
    """The options every training shares: optimisation, schedule, precision, EMA, processes, output.

    Each task's options derive from it (:class:`~sasa.classification.ClassificationOptions`,
    :class:`~sasa.detection.DetectionOptions`); the trainer and :func:`~sasa.engine.launch` read these fields.
    """

    epochs: int = option(90, "epochs of the schedule", check=POSITIVE, resume=CHANGE)
    batch_size: int = option(256, "global batch, split over the processes", check=POSITIVE)
    eval_batch_size: int | None = option(None, "global batch of the per-epoch evaluation (default: --batch-size)",
                                         check=POSITIVE, resume=CHANGE)
    lr: float | None = option(None, "peak learning rate (default: the recipe's lr, or lr_per_256 x batch / 256)",
                              check=POSITIVE)
    lr_per_256: float | None = option(None, "peak lr per 256 images of the global batch, when --lr is not given",
                                      check=POSITIVE)
    weight_decay: float = option(1e-4, "weight decay (not on norms and biases)", check=NON_NEGATIVE)
    opt: str = option("sgd", "optimizer; sgd: momentum 0.9, Nesterov", choices=("sgd", "adamw"))
    momentum: float = option(0.9, check=FRACTION, flag=False)
    warmup_epochs: float = option(0.0, "linear lr warm-up (epochs, may be fractional)", check=NON_NEGATIVE)
    warmup_lr: float = option(1e-6, check=NON_NEGATIVE, flag=False)  # lr at the start of the warm-up
    min_lr: float = option(0.0, check=NON_NEGATIVE, flag=False)  # lr at the end of the cosine decay
    sched_per: str = option("step", choices=("step", "epoch"), flag=False)  # update the lr every step or epoch
    amp: bool = option(False, "mixed precision (bf16 on CPU, fp16 on CUDA; see --amp-dtype)")
    amp_dtype: str = option("auto", "--amp's dtype: auto (bfloat16 on CPU, float16 on CUDA), bfloat16 or float16; "
                            "float16 trains with a gradient scaler", choices=AMP_DTYPES)
    grad_clip: float | None = option(None, "clip the global gradient norm to this", check=POSITIVE)
    ema: bool = option(False, "evaluate and save an exponential moving average of the weights")
    ema_decay: float = option(0.9998, "decay of --ema", check=FRACTION)
    sync_bn: bool = option(False, "SyncBatchNorm across processes (torchrun on CUDA; no effect on CPU)")
    seed: int = option(0, "seed of the weights, the data order and the augmentation", check=NON_NEGATIVE)
    workers: int = option(0, "data-loading processes per training process", check=NON_NEGATIVE, resume=CHANGE)
    device: str = option("auto", "where to train", choices=("auto", "cpu", "cuda"), resume=CHANGE)
    stop_after: int | None = option(None, "stop after N completed epochs of the schedule (continue with --resume)",
                                    check=POSITIVE, resume=SESSION, metavar="N")
    quiet: bool = option(False, "only one summary line per epoch", resume=CHANGE)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lr is None and self.lr_per_256 is None:
            raise UserError("give lr (or lr_per_256)")
        if self.warmup_epochs >= self.epochs:
            raise UserError(f"warmup_epochs {self.warmup_epochs} must be smaller than epochs {self.epochs}")

    @property
    def peak_lr(self) -> float:
        """``lr``, or the linear scaling rule ``lr_per_256 × batch_size / 256``."""
        return self.lr if self.lr is not None else self.lr_per_256 * self.batch_size / 256

    def fit_recipe(self, given: Mapping[str, Any]) -> dict[str, Any]:
        # a recipe's warm-up longer than the user's --epochs keeps its share of the schedule
        if "epochs" in given and "warmup_epochs" not in given and self.warmup_epochs >= given["epochs"]:
            return {"warmup_epochs": self.warmup_epochs * given["epochs"] / self.epochs}
        return {}


@dataclass
class StepResult:
    """What a task's ``train_step`` returns.

    ``loss``: the scalar to backpropagate (a mean over the batch). ``batch_size``: images in the batch.
    ``sums``: metrics summed over the batch (e.g. ``{"loss": loss * n, "acc": 100 * correct}``); the
    trainer reports ``sums[k] / images`` as ``train_<k>``. ``counts``: raw counts (e.g. skipped images),
    reported as ``train_<k>`` summed, and only when non-zero.
    """

    loss: torch.Tensor
    batch_size: int
    sums: dict[str, float]
    counts: dict[str, float] = dataclasses.field(default_factory=dict)


class Task(Protocol):
    """What the trainer needs from a task (classification, detection, ...)."""

    best_metric: str  # row key that selects best.safetensors, e.g. "val_top1" or "val_map"
    best_mode: str  # "max" or "min"

    def train_step(self, model: nn.Module, batch: Any, device: torch.device) -> StepResult:
        """Forward one batch (runs under autocast) and return the loss. Every batch must give a loss:
        under DDP a rank that skipped its backward would leave the others waiting in the gradient
        all-reduce (replace unreadable samples in the dataset instead of skipping a batch)."""

    def evaluate(self, model: nn.Module, loader: DataLoader, ctx: DistributedContext, autocast: Autocast) -> dict[str, float]:
        """Metrics over this rank's shard of ``loader``, reduced over ranks (e.g. with
        :func:`~sasa.engine.distributed.all_reduce_sums`); keys like ``val_loss``, ``val_top1``."""


# ---------------------------------------------------------------------------------------------
# pieces usable on their own


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def amp_dtype(device: torch.device, name: str = "auto") -> torch.dtype:
    """The autocast dtype of ``--amp-dtype name`` on ``device``: ``auto`` is bf16 on CPU, fp16 on CUDA."""
    if name not in AMP_DTYPES:
        raise ValueError(f"amp dtype must be one of {AMP_DTYPES}, got {name!r}")
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    return getattr(torch, name)


def autocast_factory(device: torch.device, enabled: bool, dtype: str = "auto") -> Autocast:
    """``with autocast():`` in :func:`amp_dtype`'s dtype; a no-op context when AMP is off."""
    if not enabled:
        return contextlib.nullcontext
    resolved = amp_dtype(device, dtype)
    return lambda: torch.autocast(device_type=device.type, dtype=resolved)


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum or AdamW; norms and biases (1-D parameters) get no weight decay."""
    from timm.optim import param_groups_weight_decay

    groups = param_groups_weight_decay(model, config.weight_decay)
    # one fused kernel over all parameters instead of a loop of small ops: measured on the attention-head
    # detector (8.7M parameters in 196 tensors, 1 CPU thread), an AdamW step takes 7 ms instead of 25-35 ms
    fused = _fused_optimizer_applies(model)
    if config.opt == "sgd":
        return torch.optim.SGD(groups, lr=config.peak_lr, momentum=config.momentum, nesterov=config.momentum > 0,
                               fused=fused)
    return torch.optim.AdamW(groups, lr=config.peak_lr, fused=fused)


def _fused_optimizer_applies(model: nn.Module) -> bool | None:
    """True where PyTorch has fused SGD/AdamW kernels for every parameter (CPU, CUDA; floating dtypes)."""
    params = list(model.parameters())
    supported = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return True if supported else None  # None: PyTorch's own default (foreach where it applies)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int) -> CosineLRScheduler:
    """Linear warm-up from ``warmup_lr`` to ``lr`` over ``warmup_epochs``, then cosine decay to ``min_lr``
    at the end of ``epochs``. Counted in iterations when ``sched_per == "step"``."""
    unit = steps_per_epoch if config.sched_per == "step" else 1
    warmup = int(round(config.warmup_epochs * unit))
    total = config.epochs * unit
    # a cosine of one step is a constant lr, as intended for such a short run: timm's warning about it
    # ("Cosine annealing scheduler will have no effect") is noise for the user, even without --quiet
    timm_logger = logging.getLogger("timm.scheduler.cosine_lr")
    previous, timm_logger.disabled = timm_logger.disabled, True
    try:
        return CosineLRScheduler(
            optimizer, t_initial=max(total - warmup, 1), lr_min=config.min_lr, warmup_t=warmup,
            warmup_lr_init=config.warmup_lr, warmup_prefix=True, t_in_epochs=config.sched_per == "epoch",
        )
    finally:
        timm_logger.disabled = previous


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) RNG states in weights_only-loadable types."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _gather_rng_states(ctx: DistributedContext) -> list[dict[str, Any]]:
    """Every rank's RNG state, in rank order (each rank augments with its own stream)."""
    local = rng_state()
    if not ctx.is_distributed:
        return [local]
    states: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(states, local)
    return states


# ---------------------------------------------------------------------------------------------


class Trainer:
    """Train ``model`` on ``task`` for ``config.epochs``, checkpointing into ``run`` after every epoch.

    ``model`` is already on ``ctx.device`` (and DDP-wrapped when distributed, see
    :func:`~sasa.engine.distributed.wrap_model`). ``metadata`` goes into both safetensors files
    (JSON-serialisable values; say how to rebuild the model). Only the main rank writes ``run``.
    """

    def __init__(
        self, *, model: nn.Module, task: Task, train_loader: DataLoader, val_loader: DataLoader | None,
        config: TrainConfig, run: RunDir, ctx: DistributedContext, progress: ProgressReporter | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self.model, self.task, self.config, self.run, self.ctx = model, task, config, run, ctx
        self.train_loader, self.val_loader = train_loader, val_loader
        self.progress = progress or ProgressReporter(enabled=ctx.is_main)
        self.metadata = dict(metadata or {})
        self.steps_per_epoch = len(train_loader)
        if self.steps_per_epoch == 0:
            raise UserError(
                "the training set gives no batch: it is empty, or holds a single image per process "
                "(a batch of one image is dropped: BatchNorm cannot train on it)"
            )
        self.optimizer = build_optimizer(unwrap_model(model), config)
        self.scheduler = build_scheduler(self.optimizer, config, self.steps_per_epoch)
        self.autocast = autocast_factory(ctx.device, config.amp, config.amp_dtype)
        # float16's narrow range needs loss scaling; bfloat16 has float32's range and trains without it
        fp16 = config.amp and amp_dtype(ctx.device, config.amp_dtype) is torch.float16
        if fp16 and ctx.device.type == "cpu" and ctx.is_main:
            # measured: sa_resnet26 train step at 32x32, batch 16, 1 thread: 2.65 s vs 0.11 s in bfloat16
            warnings.warn("--amp-dtype float16 on CPU runs about 25x slower than bfloat16 (PyTorch has few fast "
                          "float16 CPU kernels); use bfloat16 there", stacklevel=2)
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=fp16)
        self.ema = None
        if config.ema:
            from timm.utils import ModelEmaV3

            # decay warm-up, min(decay, 1 - (1 + step)^-2/3): a fixed 0.9998 averages over ~5000 steps, so a
            # run of a few hundred steps would evaluate and save weights still close to the random init
            self.ema = ModelEmaV3(unwrap_model(model), decay=config.ema_decay, use_warmup=True)
        self.start_epoch = 0  # completed epochs
        self.num_updates = 0
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.rows: list[dict[str, Any]] = []

    # -- resume ----------------------------------------------------------------------------------

    def resume(self) -> int:
        """Load ``run/state.pt``: weights, optimizer, scheduler, scaler, EMA, RNG, best metric, metrics
        rows. Returns the number of completed epochs; :meth:`fit` continues after it."""
        state = load_state(self.run.state, map_location="cpu")
        unwrap_model(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state["train_config"].get("epochs") == self.config.epochs:
            self.scheduler.load_state_dict(state["scheduler"])
        # else: more (or fewer) epochs than the run started with: the cosine is re-laid over the new
        # length and continues from num_updates (set below), rather than ending at the old length
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise UserError(f"cannot resume {str(self.run.path)!r} with EMA: the run was trained without it")
            self.ema.module.load_state_dict(state["ema"])
        self.start_epoch, self.num_updates = int(state["epoch"]), int(state["num_updates"])
        if state["steps_per_epoch"] != self.steps_per_epoch:
            raise UserError(
                f"cannot resume {str(self.run.path)!r}: it ran {state['steps_per_epoch']} steps per epoch, "
                f"now {self.steps_per_epoch} (batch size, data or number of processes changed)"
            )
        self.best_value, self.best_epoch = state["best_value"], state["best_epoch"]
        rng = state["rng"]
        set_rng_state(rng[self.ctx.rank] if len(rng) == self.ctx.world_size else rng[0])
        # rows of epochs after the commit point (killed between metrics and state) are dropped
        self.rows = [row for row in self.run.read_metrics() if row["epoch"] <= self.start_epoch]
        if self.config.sched_per == "step":
            self.scheduler.step_update(self.num_updates)
        else:
            self.scheduler.step(self.start_epoch)
        return self.start_epoch

    # -- the loop --------------------------------------------------------------------------------

    def fit(self) -> list[dict[str, Any]]:
        """Run the remaining epochs; returns every epoch's metrics row (including resumed ones)."""
        last = self.config.epochs
        if self.config.stop_after is not None:
            last = min(last, self.config.stop_after)
        for epoch in range(self.start_epoch, last):
            row = self.train_one_epoch(epoch)
            self._checkpoint(epoch + 1, row)
        return self.rows

    def train_one_epoch(self, epoch: int) -> dict[str, Any]:
        model, ctx, config = self.model, self.ctx, self.config
        model.train()
        set_epoch(self.train_loader, epoch)
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, float] = defaultdict(float)
        images = 0
        lr_sum, steps = 0.0, 0  # of the lr each step trained at: the row's lr is the epoch's mean
        bar = self.progress.epoch(desc=f"epoch {epoch + 1}/{config.epochs}", total=self.steps_per_epoch)
        start = time.perf_counter()
        for batch in self.train_loader:
            with self.autocast():
                result = self.task.train_step(model, batch, ctx.device)
            if result is None:
                raise TypeError(
                    f"{type(self.task).__name__}.train_step returned None: every batch must give a loss "
                    "(under DDP all ranks take part in every gradient all-reduce)"
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(result.loss).backward()
            if config.grad_clip is not None:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            lr_sum, steps = lr_sum + self.optimizer.param_groups[0]["lr"], steps + 1
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.num_updates += 1
            if self.ema is not None:
                self.ema.update(unwrap_model(model), step=self.num_updates)
            self.scheduler.step_update(self.num_updates)
            if not math.isfinite(result.loss.item()):
                raise UserError(f"loss is {result.loss.item()} at epoch {epoch + 1}; lower --lr or disable --amp")
            for key, value in result.sums.items():
                sums[key] += float(value)
            for key, value in result.counts.items():
                counts[key] += float(value)
            images += result.batch_size
            bar.update(result.batch_size * ctx.world_size, {key: sums[key] / images for key in sums})
        bar.close()
        train_seconds = time.perf_counter() - start
        lr = lr_sum / max(steps, 1)
        self.scheduler.step(epoch + 1)

        totals = all_reduce_sums({**{f"s:{k}": v for k, v in sums.items()}, **{f"c:{k}": v for k, v in counts.items()},
                                  "images": images, "seconds": train_seconds}, ctx)
        total_images = totals["images"]
        row: dict[str, Any] = {"epoch": epoch + 1}
        for key in sums:
            row[f"train_{key}"] = totals[f"s:{key}"] / max(total_images, 1)
        if self.val_loader is not None:
            broadcast_module(self.eval_model, ctx)  # evaluate the weights that are saved: rank 0's
            self.eval_model.eval()
            with torch.no_grad():
                row.update(self.task.evaluate(self.eval_model, self.val_loader, ctx, self.autocast))
        row["lr"] = lr
        # throughput of the slowest rank's wall time: images of all ranks / mean seconds per rank
        row["images_per_s"] = total_images / max(totals["seconds"] / ctx.world_size, 1e-9)
        row["epoch_seconds"] = time.perf_counter() - start
        for key in counts:
            if totals[f"c:{key}"]:
                row[f"train_{key}"] = int(totals[f"c:{key}"])
        return row

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated and saved in the safetensors files: the EMA when enabled."""
        return self.ema.module if self.ema is not None else unwrap_model(self.model)

    def _is_better(self, value: float | None) -> bool:
        if value is None or not math.isfinite(value):
            return False
        if self.best_value is None:
            return True
        return value > self.best_value if self.task.best_mode == "max" else value < self.best_value

    def _checkpoint(self, completed: int, row: dict[str, Any]) -> None:
        """Write the epoch's files; state.pt goes last, so a kill before it leaves the previous epoch
        resumable (the newer last/metrics files are then rewritten when that epoch runs again)."""
        value = row.get(self.task.best_metric)
        improved = self._is_better(value)
        if improved:
            self.best_value, self.best_epoch = float(value), completed
        self.rows.append(row)
        rng = _gather_rng_states(self.ctx)  # collective: every rank takes part
        if self.ctx.is_main:
            weights = self.eval_model.state_dict()
            metadata = {**self.metadata, "epoch": completed, **{k: v for k, v in row.items() if k != "epoch"}}
            self.run.last.parent.mkdir(parents=True, exist_ok=True)
            save_weights(self.run.last, weights, metadata)
            if improved:
                save_weights(self.run.best, weights, metadata)
            self.run.write_metrics(self.rows)
            self.run.plot_curves(self.rows)
            save_state(self.run.state, {
                "epoch": completed,
                "num_updates": self.num_updates,
                "steps_per_epoch": self.steps_per_epoch,
                "model": unwrap_model(self.model).state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "ema": self.ema.module.state_dict() if self.ema is not None else None,
                "best_value": self.best_value,
                "best_epoch": self.best_epoch,
                "rng": rng,
                "train_config": dataclasses.asdict(self.config),
            })
            best = f"{self.task.best_metric} best {self.best_value:.4g} (epoch {self.best_epoch})" if self.best_value is not None else ""
            shown = {k: v for k, v in row.items() if k not in ("epoch",)}
            self.progress.summary(f"epoch {completed}/{self.config.epochs}  {format_metrics(shown)}  {best}".rstrip())
        barrier(self.ctx)
