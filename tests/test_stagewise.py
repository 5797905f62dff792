"""Stage-wise (layer-by-layer) training: the schedule, what is trained at each stage, resume."""

from __future__ import annotations

import math
from functools import partial

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, Timer

from unroll.data import SparseRecoveryDataModule
from unroll.models import ALISTA, LearnedISTA
from unroll.train import ReconstructionTask, StageWise


def data(**kw):
    args = dict(problem="gaussian", m=20, n=40, p=0.1, batch_size=16, train_batches=4, val_size=64,
                test_size=64, seed=0)
    args.update(kw)
    return SparseRecoveryDataModule(**args)


def trainer(callbacks, tmp_path, **kw):
    args = dict(accelerator="cpu", devices=1, max_epochs=-1, logger=False, enable_progress_bar=False,
                enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
                enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks))
    args.update(kw)
    return L.Trainer(callbacks=callbacks, **args)


class Recorder(Callback):
    """Per training batch: (layer, stage, active depth, lr, names of trainable parameters)."""

    def __init__(self, sw: StageWise) -> None:
        self.sw, self.rows = sw, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        trainable = [n for n, p in pl_module.model.named_parameters() if p.requires_grad]
        self.rows.append((self.sw.layer, self.sw.stage, pl_module.active_layers,
                          trainer.optimizers[0].param_groups[0]["lr"], trainable))


def task(layers=3, lr=0.01):
    return ReconstructionTask(LearnedISTA(layers, lam=0.05), optimizer=partial(torch.optim.Adam, lr=lr))


def test_schedule_depth_learning_rates_and_trainable_layers(tmp_path):
    sw = StageWise(lr_factors=(1.0, 0.2, 0.02), patience=1, min_delta=100.0)  # every stage: 2 validations
    rec = Recorder(sw)
    t = task(3)
    trainer(([sw, rec]), tmp_path, max_steps=500).fit(t, datamodule=data())
    # all 3 layers x 3 stages, in order, then training stopped by the callback (not by max_steps)
    assert [(h["layer"], h["stage"]) for h in sw.history] == [(k, s) for k in (1, 2, 3) for s in (1, 2, 3)]
    assert sw.done and t.global_step < 500
    steps = [h["step"] for h in sw.history]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    for layer, stage, depth, lr, trainable in rec.rows:
        assert depth == layer  # training (and validation) runs the first `layer` layers
        assert lr == pytest.approx(0.01 * (1.0, 0.2, 0.02)[stage])
        layers = {int(n.split(".")[2]) for n in trainable}  # unrolled.steps.<k>.…
        assert layers == ({layer - 1} if stage == 0 else set(range(layer)))
    # after training the module is whole again
    assert t.active_layers is None and all(p.requires_grad for p in t.parameters())


def test_untrained_layers_do_not_move_and_warm_start_copies(tmp_path):
    t = task(3)
    t.bind(data().get_operator())
    before = [p.detach().clone() for p in t.model.layer_parameters(2)]
    sw = StageWise(patience=1, min_delta=100.0, warm_start=True)
    seen = {}

    class Peek(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if sw.layer == 2 and sw.stage == 0 and "l3" not in seen:  # first batch of layer 2
                seen["l3"] = [p.detach().clone() for p in pl_module.model.layer_parameters(2)]
                seen["l1"] = [p.detach().clone() for p in pl_module.model.layer_parameters(0)]
                seen["l2"] = [p.detach().clone() for p in pl_module.model.layer_parameters(1)]

    trainer([sw, Peek()], tmp_path, max_steps=500).fit(t, datamodule=data())
    # while layer 1 trained, layer 3 stayed at its initialisation
    for a, b in zip(seen["l3"], before):
        assert torch.equal(a, b)
    # warm start: layer 2 started from layer 1's trained values, which moved away from the init
    for a, b, c in zip(seen["l2"], seen["l1"], before):
        assert torch.equal(a, b) and not torch.equal(b, c)


def test_stage_ends_when_the_metric_stops_improving(tmp_path):
    """With min_delta = 0 a stage lasts while validation improves, at least `patience` checks more."""
    sw = StageWise(patience=2, min_delta=0.0)
    seen = []

    class Metric(Callback):
        def on_validation_end(self, trainer, pl_module):
            seen.append((sw.layer, sw.stage, float(trainer.callback_metrics["val/nmse_db"])))

    # Metric runs before StageWise in on_validation_end: it sees the stage the value belongs to
    trainer([Metric(), sw], tmp_path, max_steps=300).fit(task(2, lr=0.05), datamodule=data())
    assert sw.history, "no stage ended in 300 steps"
    first = [v for (k, s, v) in seen if (k, s) == (1, 0)]
    best = min(first)
    # the stage ended exactly `patience` validations after its best value
    assert len(first) - 1 - first.index(best) == 2
    assert sw.history[0]["best"] == pytest.approx(best)


def test_time_aware_stages_reach_the_last_layer(tmp_path):
    sw = StageWise(patience=10_000)  # never ends by patience: only the time shares move it on
    trainer([sw], tmp_path, max_time={"seconds": 6}, val_check_interval=2).fit(task(2), datamodule=data())
    assert {h["layer"] for h in sw.history} == {1, 2} or sw.layer == 2


def test_resume_continues_the_schedule(tmp_path):
    ckpt_dir = tmp_path / "ckpt"
    sw = StageWise(patience=1, min_delta=100.0)
    ck = ModelCheckpoint(dirpath=ckpt_dir, save_last=True)
    trainer([sw, ck], tmp_path, max_steps=30).fit(task(3), datamodule=data())
    state = (sw.layer, sw.stage, len(sw.history))
    assert state[0] >= 2  # mid-schedule

    saved = torch.load(ckpt_dir / "last.ckpt", weights_only=False)
    key = next(k for k in saved["callbacks"] if k.startswith("StageWise"))
    assert (saved["callbacks"][key]["layer"], saved["callbacks"][key]["stage"]) == state[:2]

    sw2 = StageWise(patience=1, min_delta=100.0)
    rec = Recorder(sw2)
    t2 = task(3)
    trainer([sw2, rec, ModelCheckpoint(dirpath=ckpt_dir, save_last=True)], tmp_path, max_steps=500).fit(
        t2, datamodule=data(), ckpt_path=str(ckpt_dir / "last.ckpt"))
    assert rec.rows[0][:3] == (state[0], state[1], state[0])  # picked up where it stopped
    assert sw2.done and len(sw2.history) == 9


def test_works_with_alista_and_beats_its_initialisation(tmp_path):
    dm = data(m=30, n=60)
    t = ReconstructionTask(ALISTA(3, gamma=1.0, theta=0.1), optimizer=partial(torch.optim.Adam, lr=0.01))
    t.bind(dm.get_operator())
    dm.setup("test")
    with torch.no_grad():
        before = float(10 * torch.log10(((t(dm.test_split.y) - dm.test_split.x) ** 2).sum()
                                        / (dm.test_split.x ** 2).sum()))
    sw = StageWise(patience=2, min_delta=0.01)
    trainer([sw], tmp_path, max_steps=600).fit(t, datamodule=dm)
    with torch.no_grad():
        after = float(10 * torch.log10(((t(dm.test_split.y) - dm.test_split.x) ** 2).sum()
                                       / (dm.test_split.x ** 2).sum()))
    assert after < before - 1.0


def test_bad_arguments_and_modules_are_refused(tmp_path):
    with pytest.raises(ValueError, match="lr_factors"):
        StageWise(lr_factors=[])
    with pytest.raises(ValueError, match="lr_factors"):
        StageWise(lr_factors=[1.0, -0.2])
    with pytest.raises(ValueError, match="patience"):
        StageWise(patience=0)
    with pytest.raises(ValueError, match="max_validations: expected an int >= 1 or None, got 0"):
        StageWise(max_validations=0)

    class Plain(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)

    with pytest.raises(TypeError, match="active_layers"):
        StageWise()._check_module(Plain())

    t = ReconstructionTask(LearnedISTA(2), optimizer=partial(torch.optim.Adam, lr=0.01),
                           lr_scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1))
    t.scheduler_factory = partial(torch.optim.lr_scheduler.StepLR, step_size=1)
    with pytest.raises(ValueError, match="lr_scheduler"):
        trainer([StageWise()], tmp_path, max_steps=2).fit(t, datamodule=data())
    assert math.isfinite(StageWise().best) is False


def test_shared_parameters_train_in_every_stage(tmp_path):
    """TiLISTA's tied matrix belongs to every layer: it is trained in each stage, with the layer(s)."""
    from unroll.models import TiLISTA

    sw = StageWise(patience=1, min_delta=100.0)
    rec = Recorder(sw)
    t = ReconstructionTask(TiLISTA(2), optimizer=partial(torch.optim.Adam, lr=1e-3))
    trainer([sw, rec], tmp_path, max_steps=500).fit(t, datamodule=data())
    assert sw.done
    for layer, stage, _, _, trainable in rec.rows:
        steps = {n for n in trainable if n.startswith("unrolled.")}
        assert "weight" in trainable
        assert {int(n.split(".")[2]) for n in steps} == ({layer - 1} if stage == 0 else set(range(layer)))


def test_scalar_lr_factor_groups_follow_the_stages(tmp_path):
    """Matrices at lr, single-element parameters at lr x scalar_lr_factor, both scaled by the stage."""
    from unroll.models import LISTACP

    dm = data()
    model = LISTACP(2, operator=dm.get_operator())
    t = ReconstructionTask(model, optimizer=partial(torch.optim.Adam, lr=0.01), scalar_lr_factor=10)
    groups = t.parameter_groups()
    assert [len(g["params"]) for g in groups] == [2, 4]  # 2 matrices | 2 thresholds + 2 steps
    assert all(p.numel() > 1 for p in groups[0]["params"]) and all(p.numel() == 1 for p in groups[1]["params"])
    opt = t.configure_optimizers()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01, 0.1])

    seen = []

    class Lrs(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append((sw.stage, [g["lr"] for g in trainer.optimizers[0].param_groups]))

    sw = StageWise(lr_factors=(1.0, 0.2, 0.02), patience=1, min_delta=100.0)
    trainer([sw, Lrs()], tmp_path, max_steps=200).fit(t, datamodule=dm)
    assert sw.done and {s for s, _ in seen} == {0, 1, 2}
    for stage, lrs in seen:
        f = (1.0, 0.2, 0.02)[stage]
        assert lrs == pytest.approx([0.01 * f, 0.1 * f])
    with pytest.raises(ValueError, match="scalar_lr_factor"):
        ReconstructionTask(model, scalar_lr_factor=0)


def test_time_shares_grow_with_depth():
    """Under max_time each stage's share of the time left is proportional to its depth."""

    class FakeTimer(Timer):
        def __init__(self, elapsed, remaining):
            super().__init__()
            self._e, self._r = elapsed, remaining

        def time_elapsed(self, stage="train"):
            return self._e

        def time_remaining(self, stage="train"):
            return self._r

    class FakeTrainer:
        def __init__(self, timer):
            self.callbacks = [timer]

    K, n = 4, 3
    total_weight = n * sum(range(1, K + 1))  # every stage of every layer, weighted by depth
    sw = StageWise(lr_factors=(1.0, 0.2, 0.02))
    sw._set_deadline(FakeTrainer(FakeTimer(10.0, 300.0)), K)
    assert sw.deadline == pytest.approx(10.0 + 300.0 * 1 / total_weight)  # layer 1, stage 1
    sw.layer, sw.stage = 3, 1  # left: stages 2-3 of layer 3 and 3 stages of layer 4
    sw._set_deadline(FakeTrainer(FakeTimer(50.0, 120.0)), K)
    assert sw.deadline == pytest.approx(50.0 + 120.0 * 3 / (3 * 2 + 4 * 3))
    # the schedule run through with every stage using its whole share: the shares are
    # proportional to depth and the last stage ends exactly when the time is up
    total, elapsed, shares = 300.0, 0.0, []
    sw = StageWise(lr_factors=(1.0, 0.2, 0.02))
    for layer in range(1, K + 1):
        for stage in range(n):
            sw.layer, sw.stage = layer, stage
            sw._set_deadline(FakeTrainer(FakeTimer(elapsed, total - elapsed)), K)
            shares.append((layer, sw.deadline - elapsed))
            elapsed = sw.deadline
    assert elapsed == pytest.approx(total)
    assert [share / layer for layer, share in shares] == pytest.approx([total / total_weight] * (K * n))


def test_a_stage_that_only_makes_things_worse_keeps_its_starting_weights(tmp_path):
    """Stage 2 of layer 1 starts from stage 1's best; a jolt that ruins the thresholds at its
    start and never recovers within the stage must not be kept."""
    sw = StageWise(lr_factors=(1.0, 1e-6), patience=2, min_delta=0.0)
    state = {}

    class Jolt(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if sw.layer == 1 and sw.stage == 1 and "start" not in state:
                state["start"] = [p.detach().clone() for p in pl_module.model.parameters()]
                with torch.no_grad():  # thresholds far too large: the estimate is ~0
                    pl_module.model.unrolled.steps[0].prox.raw_lam.add_(5.0)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if sw.layer == 2 and "after" not in state:
                state["after"] = [p.detach().clone() for p in pl_module.model.layer_parameters(0)]

    trainer([sw, Jolt()], tmp_path, max_steps=400, val_check_interval=2).fit(task(2, lr=0.05), datamodule=data())
    stage1, stage2 = sw.history[0], sw.history[1]
    assert (stage1["layer"], stage2["layer"], stage2["stage"]) == (1, 1, 2)
    assert stage2["best"] == stage1["best"]  # never beaten
    # layer 1 went into layer 2 with the weights stage 2 started from, not the jolted ones
    layer1_start = state["start"][:len(state["after"])]
    for a, b in zip(state["after"], layer1_start):
        assert torch.equal(a, b)


def test_max_validations_caps_every_stage_in_steps(tmp_path):
    """With ``max_validations`` (and patience that never ends a stage first) every stage lasts
    exactly max_validations × val_check_interval steps, whatever the metric does: the schedule
    is fixed in steps; a resume mid-stage keeps the count."""
    sw = StageWise(patience=100, max_validations=2)
    t = task(2)
    trainer([sw], tmp_path, max_steps=500, val_check_interval=3).fit(t, datamodule=data(train_batches=6))
    assert sw.done and [h["step"] for h in sw.history] == [6 * (i + 1) for i in range(6)]
    assert t.global_step == 36

    # the count of validations in the stage travels in checkpoints
    ckpt_dir = tmp_path / "ck"
    sw1 = StageWise(patience=100, max_validations=2)
    trainer([sw1, ModelCheckpoint(dirpath=ckpt_dir, save_last=True)], tmp_path, max_steps=9,
            val_check_interval=3).fit(task(2), datamodule=data(train_batches=6))
    assert (sw1.stage, sw1.validations) == (1, 1)
    sw2 = StageWise(patience=100, max_validations=2)
    trainer([sw2], tmp_path, max_steps=500, val_check_interval=3).fit(task(2), datamodule=data(train_batches=6),
                                                                         ckpt_path=str(ckpt_dir / "last.ckpt"))
    assert [h["step"] for h in sw2.history] == [6 * (i + 1) for i in range(6)]


# ---------------------------------------------------------------- CPUTimer: a budget of CPU time
def test_cpu_timer_counts_cpu_not_waiting():
    """CPUTimer reads the process's CPU time: sleeping adds (almost) nothing, computing adds it;
    its state round-trips as the offset a resumed run starts from."""
    import time

    from unroll.train import CPUTimer

    t = CPUTimer(duration="00:00:01:00")
    t.on_train_start(None, None)
    time.sleep(0.3)
    assert t.time_elapsed() < 0.1
    c0, end = time.process_time(), time.perf_counter() + 0.3
    while time.perf_counter() < end:
        sum(range(1000))
    spent = time.process_time() - c0
    assert t.time_elapsed() == pytest.approx(spent, abs=0.05) and t.time_remaining() == pytest.approx(60 - spent, abs=0.05)
    t.on_train_end(None, None)
    state = t.state_dict()
    t2 = CPUTimer(duration="00:00:01:00")
    t2.load_state_dict(state)
    assert t2.time_elapsed() == pytest.approx(state["time_elapsed"]["train"])


def test_cpu_timer_ends_a_run_and_drives_the_stage_shares(tmp_path):
    """With a clock that advances one second per reading, a 40 s CPU budget ends the run and
    StageWise, finding the timer like Lightning's, still reaches the last layer."""
    from unroll.train import CPUTimer

    class Ticking(CPUTimer):
        now = 0.0

        def clock(self):
            Ticking.now += 1.0
            return Ticking.now

    sw = StageWise(patience=10_000)  # only the time shares end stages
    t = Ticking(duration={"seconds": 40})
    tr = trainer([sw, t], tmp_path, val_check_interval=2)
    tr.fit(task(2), datamodule=data())
    assert t.time_elapsed() >= 40 and tr.global_step < 200
    assert sw.layer == 2 or {h["layer"] for h in sw.history} == {1, 2}
