"""The generic trainer on a tiny linear task: resume equivalence, schedule, progress output."""
import io

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from sasa.engine import (
    DistributedContext,
    ProgressReporter,
    RunDir,
    StepResult,
    TrainConfig,
    Trainer,
    all_reduce_sums,
    build_scheduler,
    make_loader,
    seed_everything,
)


class ToyTask:
    best_metric = "val_acc"
    best_mode = "max"

    def train_step(self, model, batch, device):
        x, y = batch
        logits = model(x.to(device))
        loss = nn.functional.cross_entropy(logits, y)
        noise = torch.rand(()).item()  # consumes the RNG: resume must restore it
        n = len(y)
        return StepResult(loss=loss, batch_size=n, sums={"loss": loss.item() * n, "noise": noise * n})

    @torch.no_grad()
    def evaluate(self, model, loader, ctx, autocast):
        correct = total = 0
        for x, y in loader:
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
        sums = all_reduce_sums({"correct": correct, "total": total}, ctx)
        return {"val_acc": 100 * sums["correct"] / sums["total"]}


def _dataset():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 5, generator=g)
    y = (x[:, 0] > 0).long()
    return TensorDataset(x, y)


def _trainer(run_path, *, stop_after=None, ema=False, ema_decay=0.9, epochs=4, out=None, task=None):
    ctx = DistributedContext()
    seed_everything(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 2))
    data = _dataset()
    train_loader = make_loader(data, batch_size=16, train=True, ctx=ctx, seed=0)
    val_loader = make_loader(data, batch_size=32, train=False, ctx=ctx)
    config = TrainConfig(epochs=epochs, lr=0.05, opt="sgd", warmup_epochs=min(1, epochs - 1), stop_after=stop_after,
                         ema=ema, ema_decay=ema_decay)
    run = RunDir(run_path) if (run_path / "state.pt").exists() else RunDir.create(run_path)
    progress = ProgressReporter(quiet=True, summary_stream=out or io.StringIO())
    return Trainer(model=model, task=task or ToyTask(), train_loader=train_loader, val_loader=val_loader, config=config,
                   run=run, ctx=ctx, progress=progress, metadata={"model": "toy"})


def _strip_timing(rows):
    return [{k: v for k, v in row.items() if k not in ("images_per_s", "epoch_seconds")} for row in rows]


@pytest.mark.parametrize("ema", [False, True])
def test_stop_and_resume_equals_one_run(tmp_path, ema):
    full = _trainer(tmp_path / "full", ema=ema)
    full_rows = full.fit()
    first = _trainer(tmp_path / "split", stop_after=2, ema=ema)
    assert len(first.fit()) == 2
    second = _trainer(tmp_path / "split", ema=ema)
    assert second.resume() == 2
    split_rows = second.fit()
    assert _strip_timing(split_rows) == _strip_timing(full_rows)
    for a, b in zip(full.model.parameters(), second.model.parameters()):
        assert torch.equal(a, b)
    assert [r["epoch"] for r in RunDir(tmp_path / "split").read_metrics()] == [1, 2, 3, 4]


def test_schedule_warms_up_linearly_then_decays_by_cosine():
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    config = TrainConfig(epochs=3, lr=1.0, warmup_epochs=1, warmup_lr=0.0)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch=10)
    lrs = []
    for update in range(1, 31):
        scheduler.step_update(update)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[4] == pytest.approx(0.5)  # half-way through warm-up
    assert lrs[9] == pytest.approx(1.0)  # warm-up done
    assert lrs[19] == pytest.approx(0.5)  # half-way through the cosine
    assert lrs[-1] == pytest.approx(0.0, abs=1e-9)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))


def test_summary_line_per_epoch_and_plain_progress_lines(tmp_path):
    out, err = io.StringIO(), io.StringIO()
    trainer = _trainer(tmp_path / "run", stop_after=2, out=out)
    trainer.progress = ProgressReporter(stream=err, summary_stream=out)  # not a TTY: plain lines
    trainer.fit()
    summaries = out.getvalue().splitlines()
    assert len(summaries) == 2 and summaries[0].startswith("epoch 1/4") and "val_acc" in summaries[0]
    assert "img/s" in err.getvalue() and "eta" in err.getvalue()


def test_invalid_train_config_names_the_value():
    with pytest.raises(ValueError, match="opt"):
        TrainConfig(epochs=1, lr=0.1, opt="lamb")
    with pytest.raises(ValueError, match="warmup_epochs"):
        TrainConfig(epochs=2, lr=0.1, warmup_epochs=2)


def test_amp_bf16_on_cpu_with_gradient_clipping(tmp_path):
    trainer = _trainer(tmp_path / "run", stop_after=1)
    trainer.config.amp, trainer.config.grad_clip = True, 1.0
    from sasa.engine import autocast_factory

    trainer.autocast = autocast_factory(trainer.ctx.device, True)
    (row,) = trainer.fit()
    assert row["train_loss"] > 0 and 0 <= row["val_acc"] <= 100


def test_item10_train_step_returning_none_is_an_error(tmp_path):
    """Skipping a batch on one rank leaves the others waiting in DDP's gradient all-reduce (a deadlock):
    a task must give a loss for every batch."""

    class SkippingTask(ToyTask):
        def train_step(self, model, batch, device):
            return None

    trainer = _trainer(tmp_path / "run", task=SkippingTask())
    with pytest.raises(TypeError, match="every batch must give a loss"):
        trainer.fit()


def test_item12_ema_with_a_long_decay_follows_a_short_run(tmp_path):
    """The recipe's decay 0.9998 over 24 steps: without a decay warm-up the EMA stays at the random init."""
    plain = _trainer(tmp_path / "plain").fit()
    ema = _trainer(tmp_path / "ema", ema=True, ema_decay=0.9998).fit()
    assert plain[-1]["val_acc"] > 75
    assert ema[-1]["val_acc"] == pytest.approx(plain[-1]["val_acc"], abs=5)


def test_item31_lr_column_is_the_mean_lr_the_epoch_trained_at(tmp_path):
    (row,) = _trainer(tmp_path / "run", epochs=1).fit()  # no warm-up: cosine from 0.05 to 0 over 6 steps
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scheduler = build_scheduler(optimizer, TrainConfig(epochs=1, lr=0.05), steps_per_epoch=6)
    used = []
    for update in range(1, 7):
        used.append(optimizer.param_groups[0]["lr"])
        scheduler.step_update(update)
    assert used[0] == pytest.approx(0.05) and optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert row["lr"] == pytest.approx(sum(used) / 6)


def test_item27_no_cosine_no_effect_warning_for_a_one_step_schedule(caplog):
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    with caplog.at_level("WARNING"):
        build_scheduler(optimizer, TrainConfig(epochs=1, lr=0.1), steps_per_epoch=1)
    assert not [record for record in caplog.records if "no effect" in record.getMessage()]


def test_item28_a_last_training_batch_of_one_image_is_dropped_with_a_warning(tmp_path):
    ctx = DistributedContext()
    data = _dataset()
    with pytest.warns(UserWarning, match="batch of one"):
        loader = make_loader(torch.utils.data.Subset(data, range(9)), batch_size=4, train=True, ctx=ctx, drop_last=False)
    assert [len(y) for _, y in loader] == [4, 4]
    with pytest.warns(UserWarning, match="batch of one"):
        single = make_loader(torch.utils.data.Subset(data, range(1)), batch_size=4, train=True, ctx=ctx)
    assert len(single) == 0
    trainer = _trainer(tmp_path / "run")
    with pytest.raises(ValueError, match="single image per process"):
        Trainer(model=trainer.model, task=ToyTask(), train_loader=single, val_loader=None, config=trainer.config,
                run=trainer.run, ctx=ctx)
    bn = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    with pytest.warns(UserWarning, match="batch of one"):
        odd = make_loader(torch.utils.data.Subset(data, range(5)), batch_size=2, train=True, ctx=ctx, drop_last=False)
    for x, _ in odd:
        bn(x)  # batches of 2 and 2, the one left is dropped: BatchNorm trains on each



@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_optimizer_is_fused_on_cpu_and_steps_like_the_unfused_one(opt):
    from sasa.engine.trainer import build_optimizer

    torch.manual_seed(0)
    fused_model, plain_model = nn.Linear(5, 3), nn.Linear(5, 3)
    plain_model.load_state_dict(fused_model.state_dict())
    fused = build_optimizer(fused_model, TrainConfig(lr=0.1, opt=opt, weight_decay=0.01))
    assert all(group["fused"] for group in fused.param_groups)
    twin = dict(zip(fused_model.parameters(), plain_model.parameters()))
    plain_groups = [{**group, "params": [twin[p] for p in group["params"]], "fused": None, "foreach": False}
                    for group in fused.param_groups]
    plain = type(fused)(plain_groups)
    x = torch.randn(8, 5)
    for _ in range(3):
        for model, optimizer in ((fused_model, fused), (plain_model, plain)):
            optimizer.zero_grad()
            model(x).square().sum().backward()
            optimizer.step()
    for fused_param, plain_param in twin.items():
        torch.testing.assert_close(fused_param, plain_param, rtol=1e-5, atol=1e-6)
