"""Adversarial PGD (issue 19): the attack layer, its feasible set and projections, the
closed-form linear reference, gradients through the attack, adversarial training on digits,
fine-tuning from a checkpoint, the configs, and bad input."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from unroll.adversarial import (AttackProblem, PGDAttack, PerturbationSet, dual_norm, linear_worst_case,
                                logistic_loss, misclassified, project_l2_ball_box, robust_logistic_fit,
                                robust_logistic_objective)
from unroll.autodiff import GradMode
from unroll.data import DigitsDataModule, load_digits_images
from unroll.models import MLPClassifier, SmallCNN
from unroll.train import AdversarialTrainingTask, CheckpointError
from unroll.train.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _images(B=12, C=1, H=8, W=8, dtype=torch.float64, seed=0):
    """Images in [0, 1] with saturated pixels (exactly 0 and 1, like digits' background)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, C, H, W, generator=g, dtype=dtype)
    x = torch.where(x < 0.3, torch.zeros_like(x), torch.where(x > 0.8, torch.ones_like(x), x))
    y = torch.randint(0, 10, (B,), generator=g)
    return x, y


def _mlp(dtype=torch.float64, seed=0, in_shape=(1, 8, 8)):
    torch.manual_seed(seed)
    return MLPClassifier(list(in_shape), [32], 10).to(dtype)


def _size(d, norm):
    f = d.detach().flatten(1)
    return f.abs().amax(1) if norm == "linf" else f.norm(dim=1)


# ---------------------------------------------------------------------------- feasibility
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.8)])
def test_every_iterate_stays_in_ball_and_box(norm, eps, dtype, tol):
    x, y = _images(dtype=dtype)
    model = _mlp(dtype)
    attack = PGDAttack(eps=eps, norm=norm, num_steps=8, seed=1)
    pset = attack.feasible_set(x)
    problem = AttackProblem(model, x, y, attack.loss, pset)
    d0 = pset.random(x, torch.Generator().manual_seed(0))
    out = attack.unrolled(problem, d0, return_trajectory=True)
    for d in [d0, *out.trajectory]:
        assert float(_size(d, norm).max()) <= eps * (1 + tol)
        assert float((x + d).detach().min()) >= -tol and float((x + d).detach().max()) <= 1 + tol
        assert bool(pset.contains(d).all())
    res = attack(model, x, y)
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0  # exactly in the box
    assert float(_size(res.x_adv - x, norm).max()) <= eps * (1 + tol)
    assert res.losses.shape == (x.shape[0], 9) and res.success.dtype == torch.bool
    # the attack does its job: the loss grows on average, and success is the model's error at x_adv
    assert float(res.losses[:, -1].mean()) > float(res.losses[:, 0].mean())
    assert torch.equal(res.success, misclassified(model(res.x_adv), y))


def test_restarts_keep_the_best_run_per_sample():
    x, _ = _images(B=24, dtype=torch.float32)
    model = _mlp(torch.float32)
    y = model(x).argmax(1)
    one = PGDAttack(eps=0.03, num_steps=4, seed=0)(model, x, y)
    five = PGDAttack(eps=0.03, num_steps=4, seed=0, restarts=5)(model, x, y)  # its first run is `one`
    assert bool((five.success | ~one.success).all())
    assert bool(((five.loss >= one.loss) | (five.success & ~one.success)).all())
    assert torch.equal(five.success, misclassified(model(five.x_adv), y))
    assert torch.allclose(five.losses[:, -1], five.loss, rtol=1e-5)
    with pytest.raises(ValueError, match=r"restarts: expected an int >= 1, got 0"):
        PGDAttack(restarts=0)


def test_l2_ball_box_projection_is_the_euclidean_projection():
    """Against an independent solver (SciPy's SLSQP), and its derivative against finite
    differences (the closed form on the free set)."""
    from scipy.optimize import minimize

    g = torch.Generator().manual_seed(3)
    n = 6
    x = torch.rand(4, n, generator=g, dtype=torch.float64)
    x[:, 0], x[:, 1] = 0.0, 1.0  # saturated entries: the box is active there
    lower, upper = -x, 1 - x
    v = 0.9 * torch.randn(4, n, generator=g, dtype=torch.float64)
    eps = 0.7
    p = project_l2_ball_box(v, eps, lower, upper)
    for i in range(4):
        res = minimize(lambda z: 0.5 * np.sum((z - v[i].numpy()) ** 2), np.zeros(n), method="SLSQP",
                       jac=lambda z: z - v[i].numpy(), bounds=list(zip(lower[i].numpy(), upper[i].numpy())),
                       constraints=[{"type": "ineq", "fun": lambda z: eps ** 2 - np.sum(z ** 2),
                                     "jac": lambda z: -2 * z}], options={"ftol": 1e-14, "maxiter": 500})
        assert np.allclose(p[i].numpy(), res.x, atol=1e-6), (p[i], res.x)
    # "clip after projecting on the ball" is feasible but farther away where the box is active
    naive = torch.clamp(v * (eps / v.norm(dim=1, keepdim=True)).clamp(max=1), lower, upper)
    assert bool(((p - v).norm(dim=1) <= (naive - v).norm(dim=1) + 1e-12).all())
    assert torch.autograd.gradcheck(lambda t: project_l2_ball_box(t, eps, lower, upper), (v.clone().requires_grad_(),))


# ---------------------------------------------------------------------------- the linear reference
@pytest.fixture(scope="module")
def zeros_vs_ones():
    x, y = load_digits_images(torch.float64)
    keep = y < 2
    return x[keep].flatten(1), torch.where(y[keep] == 1, 1.0, -1.0).to(torch.float64)


_FITS = {}


def _robust_fit(X, y, eps, norm):
    """robust_logistic_fit(l2=0.1, tol=1e-10), computed once per (norm, eps) for this module."""
    if (norm, eps) not in _FITS:
        _FITS[norm, eps] = robust_logistic_fit(X, y, eps, norm, l2=0.1, tol=1e-10)
    return _FITS[norm, eps]


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.5)])
def test_pgd_on_a_linear_model_matches_the_closed_form_worst_case(zeros_vs_ones, norm, eps):
    """Robust logistic regression solved by the core's FISTA (checked against SciPy's L-BFGS on
    the same objective), then the PGD inner loop on the robust model against the closed form."""
    from scipy.optimize import minimize

    X, y = zeros_vs_ones
    fit = _robust_fit(X, y, eps, norm)
    d = X.shape[1]

    # the reference: SciPy's L-BFGS-B, on w = p - q with p, q >= 0 for l-inf (the l1 term is not
    # smooth), on the objective itself for l2 (smooth where w != 0, as at this optimum)
    split = norm == "linf"

    def obj(z):
        zt = torch.tensor(z, requires_grad=True)
        w = zt[:d] - zt[d:2 * d] if split else zt[:d]
        if split:
            m = y * (X @ w + zt[-1]) - eps * (zt[:2 * d]).sum()
            val = nn.functional.softplus(-m).mean() + 0.05 * w.square().sum()
        else:
            val = robust_logistic_objective(w, zt[-1], X, y, eps, norm, l2=0.1)
        (gr,) = torch.autograd.grad(val, zt)
        return float(val), gr.numpy()

    n_var = 2 * d + 1 if split else d + 1
    bounds = [(0, None)] * (2 * d) + [(None, None)] if split else None
    ref = minimize(obj, np.full(n_var, 1e-3), jac=True, method="L-BFGS-B", bounds=bounds,
                   options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-10})
    assert float(fit.objective) <= ref.fun + 1e-9  # FISTA on the smooth reformulation is the optimum
    assert abs(float(fit.objective) - ref.fun) < 1e-6

    lin = nn.Linear(d, 1).double()
    with torch.no_grad():
        lin.weight.copy_(fit.w[None])
        lin.bias.copy_(fit.b)
    steps = {"linf": dict(num_steps=10), "l2": dict(num_steps=60, step_size=0.5)}[norm]
    attack = PGDAttack(eps=eps, norm=norm, lo=None, hi=None, loss=logistic_loss, seed=0, **steps)
    res = attack(lin, X, y)
    worst = linear_worst_case(fit.w, fit.b, X, y, eps, norm)
    assert torch.allclose(res.loss, worst.loss, rtol=1e-9, atol=1e-12)
    assert float((worst.loss.mean() + 0.05 * fit.w.square().sum()) - fit.objective) == pytest.approx(0, abs=1e-12)
    moved = fit.w.abs() > 1e-8  # coordinates with w = 0 do not change the loss
    assert torch.allclose(res.delta[:, moved], worst.delta[:, moved], atol=1e-7)
    assert torch.allclose(_size(worst.delta, norm), torch.full_like(y, eps))
    # the worst margin is the clean margin minus eps times the dual norm
    assert torch.allclose(worst.margin, y * (X @ fit.w + fit.b) - eps * dual_norm(fit.w, norm))


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.5)])
def test_adversarial_training_of_a_linear_model_descends_the_robust_objective(zeros_vs_ones, norm, eps):
    """Min-max through the layer: the loss at the PGD input, differentiated with the attack held
    constant (Danskin), is the robust objective and its gradient; a few outer L-BFGS steps on it
    reach the FISTA robust solution's objective."""
    X, y = zeros_vs_ones
    d = X.shape[1]
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(d, 1).double()
    with torch.no_grad():
        lin.weight.copy_(0.3 * torch.randn(1, d, generator=g, dtype=torch.float64))  # no zero weights
    steps = {"linf": dict(num_steps=2), "l2": dict(num_steps=2, step_size=0.5)}[norm]
    attack = PGDAttack(eps=eps, norm=norm, lo=None, hi=None, loss=logistic_loss, random_start=False, **steps)

    def pgd_objective():
        x_adv = attack(lin, X, y, record=False).x_adv
        return logistic_loss(lin(x_adv), y).mean() + 0.05 * lin.weight.square().sum()

    val = pgd_objective()
    val.backward()
    w, b = lin.weight.detach()[0].clone().requires_grad_(), lin.bias.detach()[0].clone().requires_grad_()
    ref = robust_logistic_objective(w, b, X, y, eps, norm, l2=0.1)
    ref.backward()
    assert float(val) == pytest.approx(float(ref), rel=1e-12)
    assert torch.allclose(lin.weight.grad[0], w.grad, rtol=1e-10, atol=1e-13)
    assert torch.allclose(lin.bias.grad[0], b.grad, rtol=1e-10, atol=1e-13)
    if norm == "l2":  # smooth where w != 0: the outer problem converges to the robust solution
        opt = torch.optim.LBFGS(lin.parameters(), lr=1, max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-15,
                                line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            v = pgd_objective()
            v.backward()
            return v

        opt.step(closure)
        fit = _robust_fit(X, y, eps, norm)
        assert float(pgd_objective()) == pytest.approx(float(fit.objective), abs=1e-7)


def test_linear_worst_case_regression_and_hinge():
    g = torch.Generator().manual_seed(0)
    X, w = torch.randn(50, 5, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    t = torch.randn(50, generator=g, dtype=torch.float64)
    for norm in ("linf", "l2"):
        wc = linear_worst_case(w, 0.3, X, t, 0.2, norm, loss="squared")
        pert = 0.5 * (t - (X + wc.delta) @ w - 0.3) ** 2
        assert torch.allclose(pert, wc.loss)
        for _ in range(20):  # no other feasible perturbation does worse
            u = torch.randn(50, 5, generator=g, dtype=torch.float64)
            u = 0.2 * u / _size(u, norm)[:, None]
            assert bool((0.5 * (t - (X + u) @ w - 0.3) ** 2 <= wc.loss + 1e-12).all())
        yb = torch.sign(t)
        hinge = linear_worst_case(w, 0.0, X, yb, 0.2, norm, loss="hinge")
        assert torch.allclose(hinge.loss, torch.relu(1 - yb * ((X + hinge.delta) @ w)))


# ---------------------------------------------------------------------------- low rank
@pytest.mark.parametrize("norm,eps", [("linf", 0.15), ("l2", 1.0)])
@pytest.mark.parametrize("rank", [1, 2])
def test_low_rank_perturbations_have_the_requested_rank(norm, eps, rank):
    x, _ = _images(B=6, C=3)
    torch.manual_seed(0)
    model = SmallCNN(3, [8, 8], [4, 8], 16, 10).double()
    y = model(x).argmax(1)  # attack the model's own predictions
    res = PGDAttack(eps=eps, norm=norm, num_steps=10, rank=rank, seed=0)(model, x, y)
    s = torch.linalg.svdvals(res.delta)  # (B, C, min(H, W)), per channel
    assert bool((s[..., 0] > 1e-3).any())
    assert float((s[..., rank:] / s[..., :1].clamp_min(1e-30)).max()) < 1e-10
    assert float(_size(res.delta, norm).max()) <= eps * (1 + 1e-12)
    assert float(res.x_adv.min()) >= 0 and float(res.x_adv.max()) <= 1
    assert float(_size(res.x_adv - x, norm).max()) <= eps * (1 + 1e-12)  # clipping only shrinks it
    assert float(res.losses[:, -1].mean()) > float(res.losses[:, 0].mean())


# ---------------------------------------------------------------------------- gradients
def test_gradient_through_the_attack_matches_finite_differences_and_differs_from_none():
    x, y = _images(B=5)
    model = _mlp()
    attack = PGDAttack(eps=0.5, norm="l2", num_steps=3, step_size=0.5, random_start=False, lo=None, hi=None)
    params = list(model.parameters())
    g = torch.Generator().manual_seed(1)
    direction = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]

    def outer(mode):
        res = attack(model, x, y, grad_mode=mode, record=False)
        return nn.functional.cross_entropy(model(res.x_adv), y)

    def grads(mode):
        model.zero_grad()
        outer(mode).backward()
        return [p.grad.clone() for p in params]

    full, none, ckpt = grads("full"), grads("none"), grads("checkpoint")
    all3, last1 = grads(GradMode("truncated", k=3)), grads(GradMode("truncated", k=1))
    assert all(torch.allclose(a, b, rtol=1e-10, atol=1e-14) for a, b in zip(full, all3))
    assert not all(torch.allclose(a, b) for a, b in zip(full, last1))
    directional = sum(float((a * v).sum()) for a, v in zip(full, direction))
    h = 1e-5
    with torch.no_grad():
        for p, v in zip(params, direction):
            p.add_(h * v)
    up = float(outer("none"))
    with torch.no_grad():
        for p, v in zip(params, direction):
            p.sub_(2 * h * v)
    down = float(outer("none"))
    with torch.no_grad():
        for p, v in zip(params, direction):
            p.add_(h * v)
    assert directional == pytest.approx((up - down) / (2 * h), rel=1e-6)
    rel = sum(float((a - b).norm()) for a, b in zip(full, none)) / sum(float(a.norm()) for a in full)
    assert rel > 1e-2  # the attack depends on the weights: Danskin's gradient is not the total one here
    assert all(torch.allclose(a, b, rtol=1e-10, atol=1e-14) for a, b in zip(full, ckpt))
    # with sign steps the iterates are piecewise constant in the weights: through = none
    sign = PGDAttack(eps=0.1, norm="linf", num_steps=3, seed=0)
    out = []
    for mode in ("full", "none"):
        model.zero_grad()
        nn.functional.cross_entropy(model(sign(model, x, y, grad_mode=mode, record=False).x_adv), y).backward()
        out.append([p.grad.clone() for p in params])
    assert all(torch.allclose(a, b) for a, b in zip(*out))


# ---------------------------------------------------------------------------- training
def _fit(task, dm, epochs):
    trainer = L.Trainer(max_epochs=epochs, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(task, datamodule=dm)
    return trainer


def _robust_accuracy(model, dm, eps):
    x = torch.stack([s.x for s in dm.split("test")])
    y = torch.stack([s.y for s in dm.split("test")])
    res = PGDAttack(eps=eps, num_steps=20, seed=0)(model, x, y)
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).double().mean())
    return clean, 1 - float(res.success.double().mean())


def test_adversarial_training_beats_standard_training_on_digits():
    results = {}
    for adversarial in (False, True):
        L.seed_everything(0)
        task = AdversarialTrainingTask(MLPClassifier([1, 8, 8], [64], 10), adversarial=adversarial, eps=0.15,
                                       num_steps=5, optimizer=lambda p: torch.optim.Adam(p, lr=3e-3))
        dm = DigitsDataModule(batch_size=128)
        _fit(task, dm, 12)
        results[adversarial] = _robust_accuracy(task.model, dm, 0.15)
    (clean_std, rob_std), (clean_adv, rob_adv) = results[False], results[True]
    assert clean_std > 0.85 and clean_adv > 0.85
    assert rob_adv > rob_std + 0.15, results


def test_attack_gradient_mode_full_trains_and_finetune_loads_the_checkpoint(tmp_path):
    L.seed_everything(0)
    dm = DigitsDataModule(batch_size=256)
    task = AdversarialTrainingTask(MLPClassifier([1, 8, 8], [16], 10), adversarial=True, eps=0.5, norm="l2",
                                   num_steps=2, attack_grad_mode="full", eval_eps=[0.0, 0.5], eval_steps=2)
    trainer = L.Trainer(max_epochs=1, limit_val_batches=1, logger=False, default_root_dir=tmp_path,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1,
                        callbacks=[L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", filename="last")])
    trainer.fit(task, datamodule=dm)
    ckpt = tmp_path / "ck" / "last.ckpt"
    assert ckpt.is_file()
    trainer.test(task, datamodule=dm, verbose=False)
    assert set(task.test_results) == {"clean_acc", "robust_acc_eps0.5"}
    assert task.test_results["robust_acc_eps0.5"][0] <= task.test_results["clean_acc"][0]
    # fine-tuning: the weights come from the checkpoint
    new = AdversarialTrainingTask(MLPClassifier([1, 8, 8], [16], 10), pretrained=str(ckpt))
    assert not torch.equal(new.model.net[0].weight, task.model.net[0].weight)
    new.setup("fit")
    assert all(torch.equal(a, b) for a, b in zip(new.model.state_dict().values(), task.model.state_dict().values()))
    with pytest.raises(ValueError, match="pretrained: .* does not fit the model"):
        AdversarialTrainingTask(MLPClassifier([1, 8, 8], [8], 10), pretrained=str(ckpt)).setup("fit")
    bad = tmp_path / "bad.ckpt"
    bad.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.ckpt"):
        AdversarialTrainingTask(MLPClassifier([1, 8, 8], [16], 10), pretrained=str(bad)).setup("fit")
    with pytest.raises(FileNotFoundError, match="pretrained: no checkpoint"):
        AdversarialTrainingTask(MLPClassifier([1, 8, 8], [16], 10), pretrained=str(tmp_path / "no.ckpt")).setup("fit")


def test_configs_standard_then_finetune_from_its_run_folder(tmp_path, monkeypatch):
    """configs/adv_digits_standard.yaml, then configs/adv_digits_finetune.yaml from the standard
    run's folder (its newest last.ckpt), then unroll evaluate on both: tiny budgets."""
    monkeypatch.chdir(tmp_path)
    tiny = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1",
            "--model.init_args.eval_steps=2", "--trainer.enable_progress_bar=false"]
    main(["fit", "--config", str(CONFIGS / "adv_digits_standard.yaml"), *tiny])
    std = tmp_path / "runs" / "adv_digits_standard" / "version_0" / "checkpoints" / "last.ckpt"
    assert std.is_file()
    main(["fit", "--config", str(CONFIGS / "adv_digits_finetune.yaml"), *tiny])  # pretrained: runs/adv_digits_standard
    fine = tmp_path / "runs" / "adv_digits_finetune" / "version_0" / "checkpoints" / "last.ckpt"
    assert fine.is_file()
    main(["evaluate", "--ckpt_path", str(std), str(fine), "--names", "standard", "finetune",
          "--output_dir", str(tmp_path / "eval")])
    import json

    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(report) == {"standard", "finetune"}
    assert {"clean_acc", "robust_acc_eps0.1", "robust_acc_eps0.2"} <= set(report["standard"])
    assert (tmp_path / "eval" / "robust_accuracy.png").is_file()


# ---------------------------------------------------------------------------- bad input
def test_bad_input_is_refused_with_the_argument_named():
    x, y = _images(B=4)
    model = _mlp()
    with pytest.raises(ValueError, match=r"eps: expected a finite number >= 0 .* got -0.1"):
        PGDAttack(eps=-0.1)
    with pytest.raises(ValueError, match=r"norm: expected one of 'linf' or 'l2' .* got 'l1'"):
        PGDAttack(norm="l1")
    with pytest.raises(ValueError, match=r"eps: .* got -1"):
        PGDAttack()(model, x, y, eps=-1)
    with pytest.raises(ValueError, match=r"x: expected inputs in the valid box \[lo, hi\] = \[0.0, 1.0\], got values "
                                         r"in \[0, 1.5\]"):
        PGDAttack()(model, torch.cat([x[:1] * 1.5, x[1:]]), y)
    with pytest.raises(ValueError, match=r"y: expected labels \(B,\) = \(4,\) matching x's batch, got shape \(3,\)"):
        PGDAttack()(model, x, y[:3])
    with pytest.raises(ValueError, match=r"x: expected a real floating tensor \(B, \*shape\) .* got shape \(4,\)"):
        PGDAttack()(model, x[:, 0, 0, 0], y)
    with pytest.raises(ValueError, match=r"x: the low-rank attack \(rank=2\) needs matrix inputs"):
        PGDAttack(rank=2)(MLPClassifier([64], [8], 10).double(), x.flatten(1), y)
    with pytest.raises(ValueError, match=r"loss: expected per-sample losses of shape \(B,\) = \(4,\), got \(\)"):
        PGDAttack(loss=lambda z, t: nn.functional.cross_entropy(z, t))(model, x, y)
    with pytest.raises(ValueError, match=r"grad_mode: expected 'none' .* got 'sometimes'"):
        PGDAttack(grad_mode="sometimes")
    with pytest.raises(ValueError, match=r"num_steps: expected an int >= 1, got 0"):
        PGDAttack(num_steps=0)
    with pytest.raises(ValueError, match=r"rank: expected None or an int >= 1, got 0"):
        PGDAttack(rank=0)
    with pytest.raises(ValueError, match=r"x: MLPClassifier expects inputs \(B, 1, 8, 8\), got \(4, 64\)"):
        model(x.flatten(1))
    with pytest.raises(ValueError, match=r"attack_grad_mode: expected one of none, full, truncated, checkpoint"):
        AdversarialTrainingTask(MLPClassifier(), attack_grad_mode="implicit-ish")
    with pytest.raises(ValueError, match=r"eval_eps: expected a finite number >= 0"):
        AdversarialTrainingTask(MLPClassifier(), eval_eps=[0.0, -0.1])
    with pytest.raises(ValueError, match=r"val_fraction, test_fraction: expected a sum < 1"):
        DigitsDataModule(val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match=r"eps: expected a finite number >= 0"):
        PerturbationSet(x, float("nan"))
