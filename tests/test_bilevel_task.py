"""BilevelTask, TabularDataModule and the configs/bilevel_*.yaml: outer steps through the CLI,
logged quantities, held-out metrics from `unroll evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

from unroll.bilevel import hypergrad, lasso  # noqa: E402
from unroll.data import TabularDataModule  # noqa: E402
from unroll.train import BilevelTask  # noqa: E402
from unroll.train.cli import UnrollCLI  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def test_tabular_data_module_splits():
    dm = TabularDataModule(dataset="make_regression", n_samples=200, n_features=20, cv=0, test_fraction=0.25,
                           val_fraction=0.4)
    b = dm.batch
    assert b.X.shape == (1, 90, 20) and b.Xv.shape == (1, 60, 20) and b.Xt.shape == (50, 20)
    assert abs(float(b.y.mean())) < 0.3 and not bool(b.corrupted.any())
    cv = TabularDataModule(dataset="diabetes", cv=5).batch
    assert cv.X.shape[0] == cv.Xv.shape[0] == 5 and cv.X.shape[1] == 4 * cv.Xv.shape[1]
    # every fold's validation rows are the other folds' training rows, once
    rows = {tuple(np.round(r, 8)) for r in cv.Xv.reshape(-1, cv.Xv.shape[-1]).numpy()}
    assert len(rows) == cv.Xv.shape[0] * cv.Xv.shape[1]
    assert not {tuple(np.round(r, 8)) for r in cv.X[0].numpy()} & {tuple(np.round(r, 8)) for r in cv.Xv[0].numpy()}
    dirty = TabularDataModule(dataset="digits", corrupt_fraction=0.5, seed=1)
    clean = TabularDataModule(dataset="digits", corrupt_fraction=0.0, seed=1)
    bd, bc = dirty.batch, clean.batch
    changed = bd.y[0] != bc.y[0]
    assert torch.equal(changed, bd.corrupted) and 0.4 < float(bd.corrupted.float().mean()) < 0.6
    with pytest.raises(ValueError, match="dataset: expected one of"):
        TabularDataModule(dataset="iris")
    with pytest.raises(ValueError, match="cv: expected 0"):
        TabularDataModule(cv=1)
    with pytest.raises(ValueError, match="corrupt_fraction: label corruption needs a classification dataset"):
        TabularDataModule(dataset="diabetes", corrupt_fraction=0.3)


def test_bilevel_task_arguments_are_checked():
    with pytest.raises(ValueError, match="inner: expected one of"):
        BilevelTask(inner="svm")
    with pytest.raises(ValueError, match="hparam: 'sample_weights' needs inner"):
        BilevelTask(inner="lasso", hparam="sample_weights", init=0.5)
    with pytest.raises(ValueError, match=r"init: expected an initial sample weight in \(0, 1\)"):
        BilevelTask(inner="logistic", hparam="sample_weights", init=1.5)
    with pytest.raises(ValueError, match="init: expected an initial penalty > 0"):
        BilevelTask(inner="lasso", init=-0.1)


def _fit(args, tmp_path):
    return UnrollCLI(args=["fit", "--config", str(CONFIGS / args[0]), f"--trainer.default_root_dir={tmp_path}",
                           "--trainer.logger.init_args.save_dir=" + str(tmp_path / "runs"), *args[1:]], run=True)


def test_lasso_cv_config_takes_hypergradient_steps_and_evaluates(tmp_path):
    """Three outer steps of configs/bilevel_lasso_cv.yaml: λ moves by Adam along minus the
    hypergradient computed independently here, the outer loss and residuals are logged, and
    `unroll evaluate` reports the test MSE of the learned λ."""
    cli = _fit(["bilevel_lasso_cv.yaml", "--trainer.max_steps=3", "--trainer.log_every_n_steps=1"], tmp_path)
    task, dm = cli.model, cli.datamodule
    assert cli.trainer.global_step == 3
    logged = cli.trainer.logged_metrics
    for key in ("train/outer", "hparam/value", "inner/iterations", "backward/residual"):
        assert key in logged, key
    assert float(logged["backward/residual"]) < 1e-6
    # the hypergradient at the learned λ, recomputed here: its sign says where Adam went
    lam = task.hparams_value().detach().clone().requires_grad_(True)
    b = dm.batch
    X, y, Xv, yv = (t.double() for t in (b.X, b.y, b.Xv, b.yv))
    (g,), _ = hypergrad(lambda l: lasso(X, y, l), lambda x, *h: ((torch.einsum("kmd,kd->km", Xv, x) - yv) ** 2).mean(),
                        lam, method="implicit", backward_solver="bicgstab", num_iters=20000, tol=1e-10)
    assert float(lam) != pytest.approx(0.1)  # it moved from init
    ckpt = next((tmp_path / "runs").rglob("last.ckpt"))
    from unroll.train.evaluate import evaluate_main

    res = evaluate_main(["--ckpt_path", str(ckpt), "--output_dir", str(tmp_path / "eval")])
    mse = res["Bilevel"]["test_mse"][0]
    assert 0 < mse < 1.0  # standardised targets: better than predicting the mean
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["Bilevel"]["test_mse"] == [mse]
    assert np.isfinite(float(g))


def test_outer_steps_lower_the_validation_loss(tmp_path):
    """Held-out Lasso on a small problem started at a far too large λ: 15 outer steps lower the
    outer (validation) loss, and λ goes down."""
    dm = TabularDataModule(dataset="make_regression", n_samples=150, n_features=30, n_informative=5, noise=10.0,
                           steps_per_epoch=15)
    task = BilevelTask(inner="lasso", init=0.5, backward_solver="bicgstab", num_iters=20000, tol=1e-9,
                       optimizer=lambda p: torch.optim.Adam(p, lr=0.2))
    import lightning as L

    trainer = L.Trainer(max_steps=15, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, accelerator="cpu",
                        default_root_dir=str(tmp_path))
    outer = []
    orig = task._solve

    def spy(batch):
        g, info = orig(batch)
        outer.append(info.outer)
        return g, info

    task._solve = spy
    trainer.fit(task, datamodule=dm)
    assert len(outer) == 15 and outer[-1] < 0.7 * outer[0]
    assert float(task.hparams_value()) < 0.5


def test_ista_lambda_config_learns_through_unrolled_iterations(tmp_path):
    cli = _fit(["bilevel_ista_lambda.yaml", "--trainer.max_steps=3", "--trainer.log_every_n_steps=1",
                "--trainer.limit_val_batches=0", "--data.init_args.val_size=64", "--data.init_args.test_size=64",
                "--data.init_args.train_batches=3"], tmp_path)
    task = cli.model
    assert cli.trainer.global_step == 3 and float(task.hparams_value()) != pytest.approx(0.1)
    assert "train/outer" in cli.trainer.logged_metrics and "inner/iterations" in cli.trainer.logged_metrics


def test_benchmark_script_runs_its_smallest_mode(monkeypatch, capsys):
    """benchmarks/bilevel.py --quick: the CV Lasso section reaches the grid's best CV MSE and the
    penalty method's error falls with its penalty (the relations BENCHMARKS.md reports)."""
    import importlib.util
    import re
    import sys

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bilevel.py"
    spec = importlib.util.spec_from_file_location("_bench_bilevel", path)
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, mod)
    spec.loader.exec_module(mod)
    threads = torch.get_num_threads()
    try:
        mod.main(["--quick", "--only", "cv_lasso,penalty"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "time to reach CV MSE <=" in out and "did NOT reach" not in out
    errors = [float(e) for e in re.findall(r"\| \de\+0\d \| ([0-9.e+-]+) \|", out)]
    assert len(errors) == 5 and all(b < a for a, b in zip(errors, errors[1:]))


@pytest.mark.parametrize("name", ["bilevel_lasso_heldout", "bilevel_lasso_diabetes", "bilevel_logistic_breast_cancer"])
def test_bilevel_configs_run(name, tmp_path):
    cli = _fit([f"{name}.yaml", "--trainer.max_steps=2", "--trainer.limit_val_batches=0"], tmp_path)
    assert cli.trainer.global_step == 2 and isinstance(cli.model, BilevelTask)
    assert (next((tmp_path / "runs").rglob("last.ckpt"))).is_file()


def test_hypercleaning_config_fits_two_outer_steps(tmp_path):
    """The hyper-cleaning config builds its task and data (one sigmoid weight per training row,
    half the labels corrupted) and fits 2 outer steps: the inner multinomial problem is solved by
    Newton (the gradient-descent loop only confirms it), the implicit hypergradient moves the
    weights away from their start, those of the corrupted rows down more."""
    cli = _fit(["bilevel_hypercleaning_digits.yaml", "--trainer.max_steps=2", "--trainer.limit_val_batches=0",
                "--trainer.log_every_n_steps=1"],
               tmp_path)
    task, dm = cli.model, cli.datamodule
    assert task.inner_kind == "multinomial" and task.hparam_kind == "sample_weights"
    b = dm.batch
    assert b.X.shape[0] == 1 and 0.4 < float(b.corrupted.float().mean()) < 0.6
    assert cli.trainer.global_step == 2
    w = task.hparams_value().detach()
    assert w.shape == (b.X.shape[1],) and float((w - 0.5).abs().max()) > 1e-3
    logged = cli.trainer.logged_metrics
    assert float(logged["inner/iterations"]) <= 100  # the Newton start is a fixed point (hundreds of steps without)
    # the validation loss is lowered by trusting the corrupted rows less: their weights go down more
    assert float(logged["hparam/weight_corrupted"]) < float(logged["hparam/weight_clean"])
