"""Learned conjugate directions (issue 14): the Poisson data, the DCDM network, the scale-invariant
loss, ``conjugate_directions`` and the config trained and evaluated through the CLI."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

import unroll
from unroll import QuadraticProblem, ScaleInvariantLoss, Status
from unroll.data import PoissonDataModule, lanczos, obstacle_mask, ritz_rhs
from unroll.data.poisson import _laplacian, _start_vector
from unroll.models import DCDM
from unroll.operators import Laplacian
from unroll.solvers import ConjugateDirectionsInfo, conjugate_directions

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _system(grid, shape="sphere", num=3, m=80, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    mask = obstacle_mask(grid, shape, 2, g)
    A = _laplacian(grid, mask)
    _, V = lanczos(A, m, _start_vector(mask, g))
    return A, mask, ritz_rhs(V, num, g, dtype=dtype)


def _train(net, grid, steps, lr=3e-3, seed=0):
    """A few Adam steps on the scale-invariant loss, on one training domain with spheres."""
    A, mask, _ = _system(grid, "sphere", 1, m=120, seed=seed, dtype=torch.float32)
    _, V = lanczos(A, 120, _start_vector(mask, torch.Generator().manual_seed(seed + 1)))
    g = torch.Generator().manual_seed(seed + 2)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    loss = ScaleInvariantLoss()
    for _ in range(steps):
        b = ritz_rhs(V, 8, g)
        value = loss(net(b) * mask, None, QuadraticProblem(A, b))
        opt.zero_grad()
        value.backward()
        opt.step()
    return net


# ---------------------------------------------------------------------------------- operator
@pytest.mark.parametrize("grid", [(5, 6), (4, 5, 3)])
def test_matrix_free_laplacian_equals_its_sparse_form_and_is_symmetric(grid):
    mask = obstacle_mask(grid, "box", 1, torch.Generator().manual_seed(3))
    assert not bool(mask.all())  # there is an obstacle
    A = Laplacian(grid, mask)
    n = math.prod(grid)
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *grid)
    dense = A(eye).reshape(n, n).T  # column j = A e_j
    assert torch.equal(dense, A.to_sparse(torch.float64).to_dense())
    assert torch.equal(dense, dense.T)
    assert float(torch.linalg.eigvalsh(dense).min()) > 0


# ---------------------------------------------------------------------------------- data
def test_lanczos_gives_orthonormal_ritz_vectors_whose_extreme_pairs_match_the_spectrum():
    grid = (6, 5, 4)
    A, mask, _ = _system(grid, "none", 1)
    theta, V = lanczos(A, 60, _start_vector(mask, torch.Generator().manual_seed(0)))
    Vf = V.reshape(V.shape[0], -1)
    assert torch.allclose(Vf @ Vf.T, torch.eye(V.shape[0], dtype=torch.float64), atol=1e-10)
    eig = torch.linalg.eigvalsh(A.to_sparse().to_dense())
    assert theta[0] == pytest.approx(float(eig[0]), rel=1e-8)  # extremal Ritz values converge first
    assert theta[-1] == pytest.approx(float(eig[-1]), rel=1e-8)
    res = A(V[:1]) - theta[0] * V[:1]
    assert float(res.norm()) < 1e-6


def test_right_hand_sides_are_normalised_zero_on_solids_and_weighted_to_the_low_spectrum():
    grid = (8, 8, 8)
    A, mask, b = _system(grid, "blobs", num=200, m=100)
    assert torch.allclose(b.reshape(200, -1).norm(dim=1), torch.ones(200, dtype=torch.float64))
    assert float(b[:, ~mask].abs().max()) == 0.0
    # the lower half of the spectrum carries 81/(81+1) of the energy on average: the Rayleigh
    # quotient bᵀAb is far below that of unweighted combinations of the same Ritz vectors
    theta, V = lanczos(A, 100, _start_vector(mask, torch.Generator().manual_seed(9)))
    g = torch.Generator().manual_seed(1)
    low = ritz_rhs(V, 200, g, low_scale=9.0, dtype=torch.float64)
    flat = ritz_rhs(V, 200, g, low_scale=1.0, dtype=torch.float64)
    rq = lambda v: float((v * A(v)).sum() / v.shape[0])  # noqa: E731
    assert rq(low) < 0.5 * rq(flat)


def test_data_module_batches_hold_one_domain_and_test_shapes_are_unseen(tmp_path):
    dm = PoissonDataModule(grid=[8, 8, 8], lanczos_vectors=40, train_obstacles=["none", "sphere"],
                           test_obstacles=["box", "blobs"], val_systems=4, test_systems=3, batch_size=5,
                           eval_batch_size=2, cache=str(tmp_path / "p.h5"))
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.y.shape == (5, 8, 8, 8) and batch.x is None
    A = dm.build_operator(batch.operator)
    assert isinstance(A, Laplacian)
    test = dm.test_split
    assert set(test.meta["obstacle"]) == {"box", "blobs"}
    # reference solutions solve the systems
    for tb in dm.test_dataloader():
        assert len(set(tb.meta["domain"].tolist())) == 1 and tb.y.shape[0] <= 2
        op = dm.build_operator(tb.operator)
        r = tb.y.double() - op(tb.x.double())
        assert float(r.norm() / tb.y.double().norm()) < 1e-5
    mixed = {"mask": torch.stack([test.operator["mask"][0], test.operator["mask"][-1]])}
    with pytest.raises(ValueError, match="mixes domains"):
        dm.build_operator(mixed)
    with pytest.raises(ValueError, match="test_obstacles: .*not seen in training"):
        PoissonDataModule(grid=[8, 8, 8], train_obstacles=["none", "box"], test_obstacles=["box"])


def test_cache_is_reused_and_refused_when_made_with_other_settings(tmp_path):
    path = str(tmp_path / "cache.h5")
    kw = dict(grid=[6, 6, 6], lanczos_vectors=30, val_systems=2, test_systems=2, cache=path)
    first = PoissonDataModule(**kw)
    first.setup()
    again = PoissonDataModule(**kw)
    again.setup()
    assert torch.equal(first.test_split.y, again.test_split.y)
    assert torch.equal(first.val_split.x, again.val_split.x)
    import h5py

    with h5py.File(path) as f:
        assert json.loads(f.attrs["lanczos_vectors"]) == 30 and json.loads(f.attrs["grid"]) == [6, 6, 6]
    other = PoissonDataModule(**{**kw, "lanczos_vectors": 31})
    with pytest.raises(ValueError, match=r"cache: .*lanczos_vectors: 30 in the file, 31 requested"):
        other.setup()
    assert sorted(os.listdir(tmp_path)) == ["cache.h5"]  # the temporary file of the atomic write is gone


def test_a_cache_path_holding_something_else_than_hdf5_gets_a_clear_error(tmp_path):
    path = tmp_path / "cache.h5"
    path.write_text("not an HDF5 file")
    with pytest.raises(ValueError, match=r"cache: .*cache\.h5' exists but is not a readable HDF5 file.*delete it"):
        PoissonDataModule(grid=[6, 6, 6], lanczos_vectors=30, val_systems=2, test_systems=2, cache=str(path)).setup()


# ---------------------------------------------------------------------------------- model and loss
def test_dcdm_is_3d_by_default_and_applies_to_any_grid_size():
    net = DCDM()
    assert net.dim == 3 and net.channels == 16
    for shape in [(2, 7, 9, 5), (1, 16, 16, 16)]:
        assert net(torch.randn(shape)).shape == shape
    net2 = DCDM(dim=2)
    assert net2(torch.randn(3, 11, 6)).shape == (3, 11, 6)
    u = torch.randn(1, 1, 4, 4, 4)
    bias = net.first.bias.view(1, -1, 1, 1, 1)
    assert torch.allclose(net.first(-2 * u) - bias, -2 * (net.first(u) - bias), atol=1e-5)  # linear: no ReLU
    with pytest.raises(ValueError, match="r: expected a batch of 3-D grids"):
        net(torch.randn(4, 4, 4))
    # more pooling levels (a deeper U): any grid size still, and one level is the paper's network, key for key
    deep = DCDM(levels=3)
    for shape in [(1, 7, 9, 5), (2, 3, 3, 3)]:
        assert deep(torch.randn(shape)).shape == shape
    assert DCDM(dim=2, levels=2)(torch.randn(1, 13, 6)).shape == (1, 13, 6)
    assert set(DCDM(levels=1).state_dict()) == set(net.state_dict()) < set(deep.state_dict())
    with pytest.raises(ValueError, match="levels: expected an int >= 1, got 0"):
        DCDM(levels=0)


def test_dcdm_with_the_mask_as_input_reads_the_geometry_from_the_operator_and_the_solver_passes_it():
    """DCDM(mask_input=True): A.mask is a second input channel (ones without obstacles);
    conjugate_directions calls it as direction(r, A) and converges on an obstacle domain; without
    the operator it says so."""
    torch.manual_seed(0)
    A, _, b = _system((8, 8, 6), "sphere", num=2, m=40)
    net = DCDM(mask_input=True, levels=2).double()
    assert net.takes_operator and net.first.in_channels == 2 and not DCDM().takes_operator
    r = b.double()
    plain = Laplacian((8, 8, 6))
    assert not torch.allclose(net(r, A), net(r, plain))  # the geometry changes the direction
    ones = DCDM._geometry(r, plain)
    assert ones.shape == (r.shape[0], 1, 8, 8, 6) and bool((ones == 1).all())
    x, info = conjugate_directions(A, r, direction=net, tol=1e-6, max_iter=300)
    assert info.status == Status.CONVERGED
    assert float(((r - A(x)).flatten(1).norm(dim=1) / r.flatten(1).norm(dim=1)).max()) <= 1e-6
    with pytest.raises(ValueError, match=r"A: DCDM\(mask_input=True\) reads the domain"):
        net(r)
    with pytest.raises(ValueError, match=r"A: expected a mask of the residual's grid \(8, 8, 6\), got \(4, 4, 4\)"):
        net(r, Laplacian((4, 4, 4), torch.ones(4, 4, 4, dtype=torch.bool)))


def test_scale_invariant_loss_is_invariant_to_scaling_q_and_zero_at_the_solution():
    A, _, b = _system((6, 6, 5), "sphere", num=4, m=50)
    q = torch.randn_like(b)
    loss = ScaleInvariantLoss()
    problem = QuadraticProblem(A, b)
    base = loss(q, None, problem)
    for c in (3.7, -0.01, 1e4):
        assert float(loss(c * q, None, problem)) == pytest.approx(float(base), rel=1e-10)
    x, _ = unroll.cg(A, b, tol=1e-12)
    assert float(loss(x, None, problem)) < 1e-20
    # independent closed form on one sample: ‖b − Aq (qᵀb)/(qᵀAq)‖²
    Aq = A(q)
    s = (q * b).sum((1, 2, 3)) / (q * Aq).sum((1, 2, 3))
    ref = ((b - s.view(-1, 1, 1, 1) * Aq) ** 2).sum((1, 2, 3)).mean()
    assert float(base) == pytest.approx(float(ref), rel=1e-12)
    assert float(loss(torch.zeros_like(q), None, problem)) == pytest.approx(float((b ** 2).sum((1, 2, 3)).mean()))


# ---------------------------------------------------------------------------------- the solver
def test_with_the_residual_as_direction_it_is_conjugate_gradient():
    A, _, b = _system((7, 6, 5), "box", num=3)
    x, info = conjugate_directions(A, b, direction=lambda r: r, tol=1e-8, max_iter=500)
    xc, ic = unroll.cg(A, b, tol=1e-8, check_every=1)
    assert isinstance(info, ConjugateDirectionsInfo) and isinstance(info, unroll.SolverInfo)
    assert info.status == Status.CONVERGED
    assert torch.equal(info.iterations, ic.iterations)
    assert torch.allclose(x, xc, atol=1e-10)


@pytest.mark.parametrize("grid", [(24, 24), (12, 12, 12)])
def test_a_trained_network_solves_unseen_systems_in_fewer_iterations_than_cg(grid):
    """2-D and 3-D alike: a network trained for 60 steps on a domain with spheres solves systems
    with random blobs (a shape it never saw) in float32, with its own directions (safeguard 0: no
    step is CG's unless the network's is useless) and in fewer iterations than CG."""
    torch.manual_seed(0)
    net = _train(DCDM(dim=len(grid)), grid, steps=60)
    A, mask, b = _system(grid, "blobs", num=4, m=150, seed=5, dtype=torch.float32)  # unseen shape
    x, info = conjugate_directions(A, b, direction=net, tol=1e-4, max_iter=500, safeguard=0.0, record_history=True)
    _, ic = unroll.cg(A, b, tol=1e-4, check_every=1)
    assert info.status == Status.CONVERGED
    assert float(((b - A(x)).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)).max()) <= 1.2e-4
    assert float(info.iterations.double().mean()) < 0.5 * float(ic.iterations.double().mean())
    assert int(info.fallbacks.sum()) == 0
    assert info.residual_history.shape == (4, int(info.iterations.max()))
    assert float(x[:, ~mask].abs().max()) == 0.0


def test_training_residuals_are_the_solvers_normalised_residuals():
    """With the residual as direction (CG), one iteration leaves r₁ = b − (bᵀb / bᵀAb) A b and two
    leave CG's second residual: the task's training residuals are those, normalised."""
    from unroll.train import DCDMTask

    class Residual(torch.nn.Module):  # q = r: conjugate directions is then CG
        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

        def forward(self, r, A=None):
            return r

    A, _, b = _system((7, 6, 5), "box", num=2)
    task = DCDMTask(Residual(), train_residual_steps=2)
    Ab = A(b)
    r1 = b - ((b * b).flatten(1).sum(1) / (b * Ab).flatten(1).sum(1)).view(-1, 1, 1, 1) * Ab
    torch.testing.assert_close(task.solver_residuals(A, b, 1), r1 / r1.flatten(1).norm(dim=1).view(-1, 1, 1, 1))
    xc, _ = unroll.cg(A, b, tol=0.0, max_iter=2, on_failure="ignore")
    r2 = b - A(xc)
    torch.testing.assert_close(task.solver_residuals(A, b, 2), r2 / r2.flatten(1).norm(dim=1).view(-1, 1, 1, 1))
    with pytest.raises(ValueError, match="train_residual_steps: expected an int >= 0, got -1"):
        DCDMTask(Residual(), train_residual_steps=-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_random_network_still_converges_through_the_fallback(dtype):
    torch.manual_seed(0)
    net = DCDM().to(dtype)
    A, _, b = _system((8, 8, 8), "blobs", num=3, m=60, seed=2, dtype=dtype)
    x, info = conjugate_directions(A, b, direction=net, tol=1e-4, max_iter=400)
    assert info.status == Status.CONVERGED and x.dtype == dtype
    assert int(info.fallbacks.sum()) > 0
    res = (b.double() - A(x.double())).flatten(1).norm(dim=1) / b.double().flatten(1).norm(dim=1)
    assert float(res.max()) <= 1.5e-4
    # without the safeguard a random network's directions are kept, and the solve stalls
    _, loose = conjugate_directions(A, b, direction=net, tol=1e-4, max_iter=60, safeguard=0.0)
    assert loose.status == Status.MAX_ITER
    # a sufficient-decrease rule (the network's step must do at least 1 % of what CG's would) keeps
    # the random network's directions where they help, and still converges
    x, some = conjugate_directions(A, b, direction=net, tol=1e-4, max_iter=400, safeguard=0.01)
    assert some.status == Status.CONVERGED
    assert bool(((some.fallbacks > 0) & (some.fallbacks < some.iterations)).all())  # both kinds of step taken
    res = (b.double() - A(x.double())).flatten(1).norm(dim=1) / b.double().flatten(1).norm(dim=1)
    assert float(res.max()) <= 1.5e-4


def test_a_nan_direction_falls_back_to_cg_and_is_counted():
    A, _, b = _system((6, 6, 6), "sphere", num=2, m=40)
    _, info = conjugate_directions(A, b, direction=lambda r: torch.full_like(r, float("nan")), tol=1e-6,
                                   max_iter=300)
    _, ic = unroll.cg(A, b, tol=1e-6, check_every=1)
    assert info.status == Status.CONVERGED
    assert torch.equal(info.fallbacks, info.iterations)
    assert torch.equal(info.iterations, ic.iterations)


def test_an_indefinite_operator_is_reported_as_breakdown_not_nan():
    A, _, b = _system((6, 6, 6), "none", num=2, m=40)
    indefinite = lambda v: A(v) - 3.0 * v  # noqa: E731  (λ_min(A) < 3 < λ_max(A))
    with pytest.warns(unroll.linalg.SolverWarning, match="broke down"):
        x, info = conjugate_directions(indefinite, b, direction=lambda r: r, tol=1e-8, max_iter=500)
    assert info.status == Status.BREAKDOWN and bool(info.breakdown.all())
    assert bool(torch.isfinite(x).all())
    negative = lambda v: -A(v)  # noqa: E731
    with pytest.raises(RuntimeError, match="broke down"):
        conjugate_directions(negative, b, direction=DCDM().double(), on_failure="raise")


def test_negative_curvature_along_the_network_direction_is_breakdown_not_nan():
    """bᵀA'b > 0 but the network proposes v with vᵀA'v < 0 (A' = A − s vvᵀ, v ⟂ b): the solver
    detects it from qᵀAq, stops that sample with finite x and reports it."""
    A, _, b = _system((6, 6, 6), "none", num=1, m=40)
    v = torch.randn(b.shape, dtype=b.dtype, generator=torch.Generator().manual_seed(3))
    v = v - (v * b).sum() / (b * b).sum() * b  # ⟂ b
    v = v / v.norm()
    s = 2.0 * float((v * A(v)).sum()) + 1.0
    op = lambda x: A(x) - s * (v * x).flatten(1).sum(1).view(-1, 1, 1, 1) * v  # noqa: E731
    assert float((b * op(b)).sum()) > 0 > float((v * op(v)).sum())
    with pytest.warns(unroll.linalg.SolverWarning, match="broke down"):
        x, info = conjugate_directions(op, b, direction=lambda r: v.expand_as(r), tol=1e-8, max_iter=50,
                                       safeguard=0.0)
    assert info.status == Status.BREAKDOWN and int(info.iterations[0]) == 1
    assert bool(torch.isfinite(x).all()) and bool(torch.isfinite(info.residual).all())


def test_a_sample_that_breaks_down_leaves_the_others_solving():
    """Per-sample operator: sample 0 sees −A (negative definite), sample 1 sees A."""
    A, _, b = _system((6, 6, 6), "sphere", num=2, m=40)
    sign = torch.tensor([-1.0, 1.0], dtype=torch.float64).view(2, 1, 1, 1)
    with pytest.warns(unroll.linalg.SolverWarning):
        x, info = conjugate_directions(lambda v: sign * A(v), b, direction=DCDM().double(), tol=1e-6,
                                       max_iter=300)
    assert info.breakdown.tolist() == [True, False] and info.converged.tolist() == [False, True]
    assert info.status == Status.BREAKDOWN and bool(torch.isfinite(x).all())
    xc, _ = unroll.cg(A, b[1:], tol=1e-10)
    assert torch.allclose(x[1:], xc, atol=1e-5)


def test_bad_shapes_get_clear_errors():
    A = Laplacian((6, 6, 6))
    with pytest.raises(ValueError, match=r"b: expected shape \(B, 6, 6, 6\)"):
        conjugate_directions(A, torch.randn(2, 6, 6, 5), direction=DCDM())
    with pytest.raises(ValueError, match="direction: expected an output of the residual's shape"):
        conjugate_directions(A, torch.randn(2, 6, 6, 6), direction=lambda r: r[:, :3])
    with pytest.raises(ValueError, match="b: expected a batch"):
        conjugate_directions(A, torch.randn(6), direction=DCDM())


def test_an_empty_batch_returns_an_empty_solution_as_cg_does():
    A = Laplacian((6, 6, 6))
    x, info = conjugate_directions(A, torch.zeros(0, 6, 6, 6), direction=DCDM())
    assert x.shape == (0, 6, 6, 6) and info.iterations.shape == (0,) and info.status == "converged"


def test_two_dimensional_problems_work_like_three_dimensional_ones():
    torch.manual_seed(1)
    A, mask, b = _system((12, 10), "sphere", num=3, m=60)
    x, info = conjugate_directions(A, b, direction=DCDM(dim=2).double(), tol=1e-6, max_iter=400)
    assert info.status == Status.CONVERGED
    xc, _ = unroll.cg(A, b, tol=1e-10)
    assert torch.allclose(x, xc, atol=1e-5)


# ---------------------------------------------------------------------------------- config, CLI
def test_config_trains_through_the_cli_and_evaluate_reports_every_method(tmp_path, monkeypatch):
    from unroll.train.cli import UnrollCLI
    from unroll.train.evaluate import evaluate_main

    monkeypatch.chdir(tmp_path)
    small = ["--data.init_args.grid=[12,12]", "--data.init_args.lanczos_vectors=40",
             "--data.init_args.train_obstacles=[none]", "--data.init_args.test_obstacles=[box]",
             "--data.init_args.val_systems=2", "--data.init_args.test_systems=2",
             f"--data.init_args.cache={tmp_path / 'c.h5'}", "--model.init_args.model.init_args.dim=2",
             "--model.init_args.max_iter=150", "--model.init_args.train_residual_steps=2"]
    cli = UnrollCLI(args=["fit", "--config", str(CONFIGS / "dcdm_poisson.yaml"), *small,
                          "--trainer.max_steps=3", "--trainer.val_check_interval=3",
                          "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu"])
    assert cli.trainer.global_step == 3
    # validation solves its systems: the logged mean iterations are the solver's, and pick the best checkpoint
    task, logged = cli.model, float(cli.trainer.callback_metrics["val/iterations"])
    with torch.no_grad():
        its = [task.solve(task.batch_operator(b), b.y, record_history=False)[1].iterations.double()
               for b in cli.datamodule.val_dataloader()]
    assert 1 <= logged <= 150 and logged == pytest.approx(float(torch.cat(its).mean()))
    assert cli.trainer.checkpoint_callback.monitor == "val/iterations"
    assert cli.trainer.checkpoint_callback.best_model_path
    ckpt = next((tmp_path / "runs" / "dcdm_poisson").glob("*/checkpoints/last.ckpt"))
    results = evaluate_main(["--ckpt_path", str(ckpt), "--output_dir", str(tmp_path / "eval")])
    assert set(results) == {"DCDM", "CG", "Jacobi-PCG", "IC-PCG"}
    for method, r in results.items():
        assert len(r["rel_residual"]) == 150 and r["rel_residual"][-1] <= -4.0 + 1e-9, method
        assert r["ms_per_system"][0] > 0
    assert results["IC-PCG"]["iterations"][0] < results["CG"]["iterations"][0]
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert len(report["DCDM"]["per_sample_iterations"]) == 2
    assert (tmp_path / "eval" / "rel_residual.png").exists()
    assert all(len(r["ms_per_system"]) == len(r["iterations"]) == 1 for r in results.values())  # once per run
    # the solver report: one row per method and system, with the geometry the network never saw
    import csv

    rows = list(csv.DictReader((tmp_path / "eval" / "systems.csv").open()))
    dcdm_name = next(m for m in {r["method"] for r in rows} if m.startswith("DCDM"))
    assert sorted({r["method"] for r in rows}) == sorted([dcdm_name, "CG", "Jacobi-PCG", "IC-PCG"])
    assert len(rows) == 8 and {r["obstacle"] for r in rows} == {"box"}
    by = {(r["method"], int(r["system"])): r for r in rows}
    assert [int(by[(dcdm_name, i)]["iterations"]) for i in range(2)] == report["DCDM"]["per_sample_iterations"]
    assert [int(by[("CG", i)]["iterations"]) for i in range(2)] == report["CG"]["per_sample_iterations"]
    assert all(float(by[("IC-PCG", i)]["setup_ms"]) > 0 and by[("CG", i)]["fallbacks"] == "" for i in range(2))
    assert all(0 <= int(by[(dcdm_name, i)]["fallbacks"]) <= int(by[(dcdm_name, i)]["iterations"]) for i in range(2))
    solvers = json.loads((tmp_path / "eval" / "solvers.json").read_text())
    assert solvers["CG"]["iterations_mean"] == pytest.approx(results["CG"]["iterations"][0])
    assert solvers["IC-PCG"]["converged"] == 2 and solvers["CG"]["device"] == "cpu"
    assert (tmp_path / "eval" / "residual_curves.png").stat().st_size > 0
    # the same checkpoint with the network as its own coarse-grid solve (12² → 6²; no new parameters),
    # safeguard 0 so that the barely trained network's directions are used, not CG's
    runs = {m: evaluate_main(["--config", str(CONFIGS / "dcdm_poisson.yaml"), *small, "--model.init_args.safeguard=0.0",
                              f"--model.init_args.multilevel={m}", "--ckpt_path", str(ckpt),
                              "--output_dir", str(tmp_path / f"eval_{m}")]) for m in ("null", "6")}
    assert runs["6"]["DCDM"]["rel_residual"] != runs["null"]["DCDM"]["rel_residual"]  # a different solve
    assert runs["6"]["CG"]["iterations"] == runs["null"]["CG"]["iterations"] == results["CG"]["iterations"]


def test_benchmark_script_runs_at_its_smallest(tmp_path, monkeypatch, capsys):
    """benchmarks/dcdm.py end to end on 8³ (a few seconds of training): every method reaches the
    tolerance or says it did not, and the tables are printed."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_bench_dcdm", CONFIGS.parent / "benchmarks" / "dcdm.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    out = tmp_path / "r.json"
    try:
        mod.main(["--train-minutes", "0.05", "--root", str(tmp_path), "--sizes", "8", "--systems", "1",
                  "--eval-lanczos", "30", "--pure-sizes", "8", "--multilevel", "4", "--out", str(out),
                  "--extra=--data.init_args.grid=[8,8,8]", "--extra=--data.init_args.lanczos_vectors=30",
                  "--extra=--data.init_args.val_systems=2", "--extra=--data.init_args.test_systems=1"])
    finally:
        torch.set_num_threads(threads)
    r = json.loads(out.read_text())
    assert set(r["cases"]) == {"8^3 no obstacles", "8^3 obstacles (box+blobs)"}
    for case in r["cases"].values():
        assert case["IC-PCG"]["iterations"][0] < case["CG"]["iterations"][0]
        assert case["DCDM"]["iterations"][0] is not None  # the safeguard keeps even a barely trained net convergent
        assert case["DCDM multilevel"]["levels"] == 2 and case["DCDM multilevel"]["iterations"][0] is not None
    text = capsys.readouterr().out
    assert "| case | systems | CG | Jacobi-PCG | IC-PCG | DCDM |" in text
    assert "| case | grids | DCDM | DCDM multilevel |" in text
    mod.main(["--plot-growth", str(tmp_path / "growth.png"), f"smoke={out}"])
    assert (tmp_path / "growth.png").stat().st_size > 0
    assert r["train_budget"] == {"minutes": 0.05, "clock": "cpu"}
