"""configs/ista_unsupervised.yaml and configs/iht.yaml trained through the CLI for a few steps
(the supervised-vs-unsupervised benchmark rests on them): the loss they train goes down and the
parameters they learn move, the others stay."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unroll import L1, ObjectiveLoss
from unroll.metrics import nmse
from unroll.problem import Problem
from unroll.train.cli import UnrollCLI

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Configs may write under ./runs: run every test in its own folder."""
    monkeypatch.chdir(tmp_path)


def overrides(tmp_path, steps):
    """The config as shipped (problem, model, loss, optimiser), for `steps` steps, without logs
    or validation; works whether or not the config fixes checkpoint folders or a progress bar."""
    return [f"--trainer.default_root_dir={tmp_path}", "--trainer.max_time=null", f"--trainer.max_steps={steps}",
            "--trainer.logger=false", "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0",
            "--trainer.accelerator=cpu", "--trainer.devices=1",
            "--data.init_args.val_size=64", "--data.init_args.test_size=256"]


def build(name, tmp_path, steps, fit):
    args = ["--config", str(CONFIGS / f"{name}.yaml"), *overrides(tmp_path, steps)]
    return UnrollCLI(args=["fit", *args] if fit else args, run=fit)


def test_ista_unsupervised_config_trains_the_steps_on_the_lasso(tmp_path):
    """Unsupervised: the Lasso objective of the network's output on held-out data goes down
    (ObjectiveLoss is what it trains); the steps move, the thresholds' weights do not
    (learn_threshold: false)."""
    init = build("ista_unsupervised", tmp_path, 0, fit=False)
    cli = build("ista_unsupervised", tmp_path, 40, fit=True)
    task, dm = cli.model, cli.datamodule
    assert isinstance(task.loss, ObjectiveLoss) and cli.trainer.global_step == 40
    dm.setup("test")
    y = dm.test_split.y
    op = dm.get_operator()
    lasso = ObjectiveLoss(L1(0.1))  # the config's objective, built here independently
    with torch.no_grad():
        before = float(lasso(init.model.model(y, op), None, Problem.create(op, y)))
        after = float(lasso(task.model(y, op), None, Problem.create(op, y)))
    assert after < 0.98 * before, (before, after)
    s0, s1 = init.model.model.steps_and_weights(), task.model.steps_and_weights()
    assert all(a[0] == pytest.approx(1.0) for a in s0)
    assert sum(abs(b[0] - a[0]) > 1e-3 for a, b in zip(s0, s1)) >= len(s0) // 2  # steps learned
    assert all(b[1] == a[1] == pytest.approx(0.1) for a, b in zip(s0, s1))  # λ fixed


def test_iht_config_trains_steps_and_weights_on_the_mse(tmp_path):
    """Supervised learned IHT: the NMSE to the true x on held-out data goes down and the steps
    move. The ℓ0 weights λ_k are fixed by the config (learn_threshold: false): hard thresholding
    H_τ has zero derivative in τ almost everywhere, so no gradient would reach them."""
    init = build("iht", tmp_path, 0, fit=False)
    cli = build("iht", tmp_path, 40, fit=True)
    task, dm = cli.model, cli.datamodule
    assert cli.trainer.global_step == 40
    dm.setup("test")
    y, x = dm.test_split.y, dm.test_split.x
    op = dm.get_operator()
    with torch.no_grad():
        before = float(nmse(init.model.model(y, op), x))
        after = float(nmse(task.model(y, op), x))
    assert after < before - 0.5, (before, after)  # dB
    s0, s1 = init.model.model.steps_and_weights(), task.model.steps_and_weights()
    assert sum(abs(b[0] - a[0]) > 1e-3 for a, b in zip(s0, s1)) >= len(s0) // 2
    assert all(b[1] == a[1] for a, b in zip(s0, s1))
    steps = task.model.unrolled.steps  # the last step's gradients are still there
    assert all(p.grad is None or not p.grad.any() for s in steps for p in s.prox.parameters())
    others = [p for s in steps for n, p in s.named_parameters() if not n.startswith("prox.")]  # the steps
    assert len(others) == len(steps) and all(p.grad is not None and p.grad.abs().sum() > 0 for p in others)
