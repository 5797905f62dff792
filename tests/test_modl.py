"""MoDL, the MRI baselines and the MRI task (issue 17): shapes, the data-consistency solve, its
implicit gradient against finite differences and a dense autograd solve, training beats the
zero-filled reconstruction, and ``unroll evaluate`` writes the fastMRI tables and panels."""

import json
import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from unroll.data import Batch
from unroll.info import SolverInfo
from unroll.metrics import fastmri_nmse, fastmri_psnr, fastmri_ssim
from unroll.models import CompressedSensing, MoDL, MoDLDenoiser, ZeroFilled
from unroll.models.mri_baselines import HaarWaveletL1, haar2, ihaar2
from unroll.operators import SENSE, random_mask
from unroll.train import FastMRITracker, MRIBaseline, MRILoss, MRIReconstructionTask


# ---------------------------------------------------------------------------------- toy data
def _phantom(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    """``(n, h, w)`` complex images: random ellipses with smooth textures and a slow phase."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    out = []
    for _ in range(n):
        img = torch.zeros(h, w)
        for _ in range(6):
            cx, cy = (torch.rand(2, generator=g) - 0.5) * 0.8
            ax, ay = 0.15 + 0.5 * torch.rand(2, generator=g)
            inside = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 < 1
            img = img + inside * (0.3 + 0.7 * torch.rand(1, generator=g))
        img = img * (1 + 0.2 * torch.sin(6 * xx + 3 * yy))
        phase = torch.exp(1j * 0.5 * math.pi * (xx + 0.5 * yy) * float(torch.rand(1, generator=g)))
        out.append(img * phase)
    return torch.stack(out).to(torch.complex64)


def _maps(c: int, h: int, w: int) -> torch.Tensor:
    """``(c, h, w)`` smooth coil sensitivities around the image, normalised so Σ|S|² = 1."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    maps = []
    for k in range(c):
        a = 2 * math.pi * k / c
        px, py = 1.3 * math.cos(a), 1.3 * math.sin(a)
        mag = torch.exp(-((xx - px) ** 2 + (yy - py) ** 2) / 1.5)
        maps.append(mag * torch.exp(1j * (0.4 * k + 0.3 * (xx * px + yy * py))))
    maps = torch.stack(maps)
    return (maps / torch.sqrt((maps.abs() ** 2).sum(0, keepdim=True))).to(torch.complex64)


class ToyMRI(Dataset):
    """Slices of the MRI batch contract from toy phantoms (2 volumes of ``n // 2`` slices)."""

    def __init__(self, n: int = 8, size: int = 32, coils: int = 4, accel: float = 4.0, seed: int = 0) -> None:
        self.x = _phantom(n, size, size, seed)
        self.maps = _maps(coils, size, size)
        self.masks = [random_mask(size, 0.08, accel, seed=seed * 1000 + i).float().view(1, 1, size) for i in range(n)]
        self.n, self.size = n, size
        vol = [i * 2 // n for i in range(n)]
        self.fnames = [f"toy{seed}_{v}.h5" for v in vol]
        self.max = [max(float(self.x[j].abs().max()) for j in range(n) if vol[j] == vol[i]) for i in range(n)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Batch:
        op = SENSE(self.maps, self.masks[i].view(-1))
        y = op(self.x[i:i + 1])[0]
        return Batch(y, self.x[i].abs(), {"mask": self.masks[i], "sensitivities": self.maps},
                     {"fname": self.fnames[i], "slice_num": torch.tensor(i % (self.n // 2)),
                      "max": torch.tensor(self.max[i]), "data_range": torch.tensor(self.max[i]),
                      "num_low_freqs": torch.tensor(3)})


class ToyMRIDataModule(L.LightningDataModule):
    """The MRI contract's data module on toy phantoms (``build_operator`` → SENSE)."""

    def __init__(self, n_train: int = 8, n_val: int = 4, n_test: int = 4, size: int = 32, coils: int = 4,
                 batch_size: int = 2) -> None:
        super().__init__()
        self.train = ToyMRI(n_train, size, coils, seed=1)
        self.val = ToyMRI(n_val, size, coils, seed=2)
        self.test = ToyMRI(n_test, size, coils, seed=3)
        self.batch_size = batch_size

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(0))

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=self.batch_size)

    def test_dataloader(self):
        return DataLoader(self.test, batch_size=self.batch_size)

    def build_operator(self, params):
        return SENSE(params["sensitivities"], params["mask"])


def _toy_batch(n=2, size=16, coils=3, dtype=torch.complex64):
    ds = ToyMRI(n, size, coils, seed=5)
    batch = next(iter(DataLoader(ds, batch_size=n)))
    op = SENSE(batch.operator["sensitivities"].to(dtype), batch.operator["mask"])
    return batch.y.to(dtype), op, batch


# ---------------------------------------------------------------------------------- MoDL
def test_modl_shapes_trajectory_and_errors():
    y, op, batch = _toy_batch()
    model = MoDL(num_layers=3, features=8, depth=5)
    x = model(y, op)
    assert x.shape == (2, 16, 16) and x.is_complex()
    out = model(y, op, num_iters=5, return_trajectory=True)
    assert len(out.trajectory) == 5 and torch.equal(out.trajectory[-1], out.x)
    assert (out.info.iterations > 0).all()
    assert MoDLDenoiser(features=8)(x).shape == x.shape
    with pytest.raises(ValueError, match="num_layers"):
        MoDL(num_layers=0)
    with pytest.raises(ValueError, match="y: MoDL expects complex"):
        model(y.real, op)
    with pytest.raises(TypeError, match="op: MoDL needs"):
        model(y, None)


def test_modl_untrained_denoiser_is_identity():
    """The zero-initialised last layer: the untrained denoiser returns its input."""
    x = torch.randn(2, 12, 12, dtype=torch.complex64)
    den = MoDLDenoiser(features=8, depth=5, batch_norm=True).eval()
    assert torch.equal(den(x), x)


def test_modl_dc_step_solves_its_system(float64_default):
    """x = (AᴴA + μI)⁻¹(Aᴴy + μz): the residual of the returned x is below the CG tolerance."""
    y, op, _ = _toy_batch(dtype=torch.complex128)
    model = MoDL(num_layers=1, features=4, cg_tol=1e-10, cg_max_iter=200, normalize=False)
    rhs0 = op.adjoint(y)
    z = torch.randn_like(rhs0)
    mu = torch.tensor(0.07, dtype=torch.float64)
    x, info = model.data_consistency(op, rhs0, z, mu)
    b = rhs0 + mu * z
    res = (op.normal(x) + mu * x - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)
    assert bool(info.converged.all()) and float(res.max()) < 1e-9
    # and it is the minimiser of ‖Ax − y‖² + μ‖x − z‖²: a perturbation only increases it
    f = lambda v: (op(v) - y).abs().square().sum() + mu * (v - z).abs().square().sum()  # noqa: E731
    assert f(x) < f(x + 1e-3 * torch.randn_like(x))


class _DenseMoDL(MoDL):
    """MoDL whose DC step is a dense linear solve differentiated by plain autograd (the reference)."""

    def data_consistency(self, op, rhs0, z, mu, x0=None):
        b, h, w = rhs0.shape
        n = h * w
        eye = torch.eye(n, dtype=rhs0.dtype).reshape(n, h, w)
        out = []
        for i in range(b):
            cols = torch.stack([op.normal(e.expand(b, h, w))[i].reshape(n) for e in eye], dim=1)
            mat = cols + mu * torch.eye(n, dtype=rhs0.dtype)
            out.append(torch.linalg.solve(mat, (rhs0[i] + mu * z[i]).reshape(n)).reshape(h, w))
        info = SolverInfo(iterations=torch.zeros(b, dtype=torch.long), residual=torch.zeros(b),
                          converged=torch.ones(b, dtype=torch.bool))
        return torch.stack(out), info


def _loss(model, y, op, target):
    return (model(y, op).abs() - target).square().sum()


def test_modl_gradient_through_cg_matches_dense_autograd_and_finite_differences(float64_default):
    torch.manual_seed(0)
    y, op, batch = _toy_batch(n=2, size=8, coils=2, dtype=torch.complex128)
    target = batch.x.to(torch.float64)
    kw = dict(num_layers=2, features=4, depth=3, batch_norm=False, mu=0.3, cg_tol=1e-12, cg_max_iter=200)
    model = MoDL(**kw)
    with torch.no_grad():  # a non-trivial denoiser (the default starts as the identity)
        for p in model.denoiser.parameters():
            p.copy_(0.3 * torch.randn_like(p))
    ref = _DenseMoDL(**kw)
    ref.load_state_dict(model.state_dict())
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(_loss(model, y, op, target), list(params.values()))
    grads_ref = torch.autograd.grad(_loss(ref, y, op, target), list(ref.parameters()))
    for (name, _), g, gr in zip(params.items(), grads, grads_ref):
        assert torch.allclose(g, gr, rtol=1e-6, atol=1e-9), name
    # finite differences along a random direction of all parameters (μ included)
    direction = [torch.randn_like(p) for p in params.values()]
    eps = 1e-6
    with torch.no_grad():
        def shifted(s):
            for p, d in zip(params.values(), direction):
                p.add_(s * d)
            v = _loss(model, y, op, target)
            for p, d in zip(params.values(), direction):
                p.sub_(s * d)
            return v
        fd = (shifted(eps) - shifted(-eps)) / (2 * eps)
    analytic = sum((g * d).sum() for g, d in zip(grads, direction))
    assert torch.allclose(analytic, fd, rtol=1e-5), (float(analytic), float(fd))
    assert float(grads[list(params).index("mu.raw")].abs()) > 0


def test_modl_backward_runs_one_adjoint_solve_per_dc_step():
    """The CG solve is differentiated through its adjoint solve: the backward of each DC step
    reports its own CG run (info.backward), and memory does not hold the CG iterations."""
    y, op, batch = _toy_batch()
    model = MoDL(num_layers=1, features=4, depth=3)
    infos = []
    orig = model.data_consistency

    def spy(*a, **k):
        x, info = orig(*a, **k)
        infos.append(info)
        return x, info

    model.data_consistency = spy
    (model(y, op).abs() - batch.x).square().mean().backward()
    assert len(infos) == 1 and infos[0].backward is not None and (infos[0].backward.iterations > 0).all()


# ---------------------------------------------------------------------------------- baselines
def test_haar_is_orthonormal_and_the_prox_is_exact(float64_default):
    x = torch.randn(2, 16, 24, dtype=torch.complex128)
    c = haar2(x, 3)
    assert torch.allclose(c.norm(), x.norm()) and torch.allclose(ihaar2(c, 3), x)
    c2 = torch.randn_like(x)  # ihaar2 is the adjoint: <W x, c> = <x, Wᵀ c>
    assert torch.allclose((haar2(x, 3) * c2.conj()).sum(), (x * ihaar2(c2, 3).conj()).sum())
    # prox optimality: p = argmin ½‖p − v‖² + t λ‖Wp‖₁ beats any perturbation
    reg = HaarWaveletL1(0.3, levels=3)
    v = torch.randn(1, 16, 24, dtype=torch.complex128)
    p = reg.prox(v, 0.5)
    obj = lambda q: 0.5 * (q - v).abs().square().sum() + 0.5 * reg.value(q).sum()  # noqa: E731
    for _ in range(5):
        assert obj(p) <= obj(p + 1e-4 * torch.randn_like(p))


def test_zero_filled_and_cs_shapes_and_cs_beats_zero_filled():
    y, op, batch = _toy_batch(n=2, size=32, coils=4)
    target, d = batch.x, batch.meta["max"]
    zf = ZeroFilled("sense")(y, op)
    zf_rss = ZeroFilled("rss")(y, op)
    assert zf.shape == zf_rss.shape == (2, 32, 32) and zf.is_complex() and zf_rss.is_complex()
    assert torch.allclose(zf_rss.imag, torch.zeros(()))
    cs = CompressedSensing(lam=1e-3, max_iter=60)(y, op)

    def score(x):
        return float(torch.stack([fastmri_ssim(target[i:i + 1], x[i:i + 1].abs(), d[i]) for i in range(2)]).mean())
    assert score(cs) > score(zf) + 0.01
    with pytest.raises(ValueError, match="combine"):
        ZeroFilled("sos")


# ---------------------------------------------------------------------------------- task and evaluation
def test_mri_loss_and_tracker_match_fastmri_functions():
    ds = ToyMRI(4, 32, 4, seed=7)
    loader = DataLoader(ds, batch_size=3)  # batches straddle the two volumes
    tracker = FastMRITracker(num_panels=2)
    preds, targets = [], []
    for batch in loader:
        op = SENSE(batch.operator["sensitivities"], batch.operator["mask"])
        est = ZeroFilled()(batch.y, op)
        tracker.update([est], batch.x, meta=batch.meta)
        preds.append(est.abs())
        targets.append(batch.x)
    pred, tgt = torch.cat(preds), torch.cat(targets)
    vols = [pred[:2], pred[2:]], [tgt[:2], tgt[2:]]
    expect = {"nmse": [float(fastmri_nmse(t, p)) for p, t in zip(*vols)],
              "psnr": [float(fastmri_psnr(t, p, t.max())) for p, t in zip(*vols)],
              "ssim": [float(fastmri_ssim(t, p, t.max())) for p, t in zip(*vols)]}
    got = tracker.compute()
    for k, v in expect.items():
        assert got[k][0] == pytest.approx(sum(v) / 2, rel=1e-5), k
    rows = tracker.volume_rows()
    assert [r["fname"] for r in rows] == ["toy7_0.h5", "toy7_1.h5"] and [r["slices"] for r in rows] == [2, 2]
    assert rows[1]["ssim"] == pytest.approx(expect["ssim"][1], rel=1e-5)
    assert len(tracker.slice_rows()) == 4 and len(tracker.panels) == 2
    loss = MRILoss(1.0, 1.0)(pred[:2], tgt[:2], data_range=torch.tensor(ds.max[:2]))
    ssim = float(fastmri_ssim(tgt[:1], pred[:1], ds.max[0]) + fastmri_ssim(tgt[1:2], pred[1:2], ds.max[1])) / 2
    l1 = float(((pred[:2] - tgt[:2]).abs().flatten(1).mean(1) / torch.tensor(ds.max[:2])).mean())
    assert float(loss) == pytest.approx(1 - ssim + l1, rel=1e-5)
    with pytest.raises(ValueError, match="at least one"):
        MRILoss(0.0, 0.0)


def _fit(task, dm, steps, tmp_path):
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                        default_root_dir=tmp_path)
    trainer.fit(task, datamodule=dm)
    return trainer


def _test_ssim(task, dm, tmp_path):
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.test(task, datamodule=dm, verbose=False)
    return task.test_results["ssim"][-1]


def test_modl_trained_a_few_steps_beats_zero_filled(tmp_path):
    torch.manual_seed(0)
    dm = ToyMRIDataModule(n_train=8, n_test=4, size=32, coils=4, batch_size=2)
    zf = _test_ssim(MRIReconstructionTask(ZeroFilled()), dm, tmp_path)
    task = MRIReconstructionTask(MoDL(num_layers=3, features=16, depth=5, batch_norm=False),
                                 optimizer=lambda p: torch.optim.Adam(p, lr=1e-3))
    before = _test_ssim(task, dm, tmp_path)
    _fit(task, dm, 12, tmp_path)
    after = _test_ssim(task, dm, tmp_path)
    assert after > before and after > zf + 0.02, (zf, before, after)
    assert set(task.test_results) == {"nmse", "psnr", "ssim"}


def test_baseline_lam_is_tuned_on_the_validation_split():
    dm = ToyMRIDataModule(n_val=4, size=32)
    task = MRIReconstructionTask(ZeroFilled())
    task.operator_builder = dm.build_operator
    base = MRIBaseline(CompressedSensing(max_iter=30), tune_lams=[1e-4, 1e-2, 1.0])
    base.prepare(task, dm)
    assert set(base.tuning) == {1e-4, 1e-2, 1.0}
    assert base.model.lam == max(base.tuning, key=base.tuning.get) and base.model.lam != 1.0
    with pytest.raises(ValueError, match="tune_lams"):
        MRIBaseline(ZeroFilled(), tune_lams=[0.1])


def test_write_evaluation_tables_and_panels(tmp_path):
    ds = ToyMRI(4, 32, 4, seed=9)
    trackers = {"MoDL": FastMRITracker(num_panels=2), "zero_filled": FastMRITracker(num_panels=2)}
    for batch in DataLoader(ds, batch_size=2):
        op = SENSE(batch.operator["sensitivities"], batch.operator["mask"])
        trackers["MoDL"].update([CompressedSensing(max_iter=10)(batch.y, op)], batch.x, meta=batch.meta)
        trackers["zero_filled"].update([ZeroFilled()(batch.y, op)], batch.x, meta=batch.meta)
    task = MRIReconstructionTask(ZeroFilled(), num_panels=2)
    paths = task.write_evaluation(trackers, str(tmp_path))
    rows = json.loads((tmp_path / "per_volume.json").read_text())
    assert {r["method"] for r in rows} == {"MoDL", "zero_filled"} and len(rows) == 4
    assert len(json.loads((tmp_path / "per_slice.json").read_text())) == 8
    assert (tmp_path / "per_slice.csv").read_text().splitlines()[0] == "method,fname,slice,nmse,psnr,ssim"
    panels = [v for k, v in paths.items() if k.startswith("panel_")]
    assert len(panels) == 2 and all(open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n" for p in panels)


# ---------------------------------------------------------------------------------- the CLI
_TOY_CONFIG = """
seed_everything: 0
trainer:
  max_steps: 4
  logger:
    class_path: lightning.pytorch.loggers.CSVLogger
    init_args: {{save_dir: {root}/runs, name: toy_modl}}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{filename: last}}
  val_check_interval: 1.0
  enable_progress_bar: false
model:
  class_path: unroll.train.MRIReconstructionTask
  init_args:
    model:
      class_path: unroll.models.MoDL
      init_args: {{num_layers: 2, features: 8, depth: 5}}
    num_panels: 2
    baselines:
      - class_path: unroll.train.MRIBaseline
        init_args:
          model: {{class_path: unroll.models.ZeroFilled, init_args: {{combine: sense}}}}
          name: zero_filled
      - class_path: unroll.train.MRIBaseline
        init_args:
          model: {{class_path: unroll.models.CompressedSensing, init_args: {{max_iter: 20}}}}
          tune_lams: [0.001, 0.01]
data:
  class_path: test_modl.ToyMRIDataModule
  init_args: {{n_train: 4, n_val: 2, n_test: 4, size: 32}}
"""


def test_cli_fit_then_evaluate_writes_tables_and_panels(tmp_path, monkeypatch, capsys):
    from unroll.train.cli import main

    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "toy_modl.yaml"
    cfg.write_text(_TOY_CONFIG.format(root=tmp_path))
    main(["fit", "--config", str(cfg)])
    ckpt = sorted(tmp_path.rglob("last.ckpt"))[-1]
    out = tmp_path / "eval"
    main(["evaluate", "--ckpt_path", str(ckpt), "--output_dir", str(out)])
    printed = capsys.readouterr().out
    assert "SSIM" in printed
    report = json.loads((out / "metrics.json").read_text())
    assert set(report) == {"MoDL", "zero_filled", "cs_wavelet"}
    assert set(report["MoDL"]) >= {"nmse", "psnr", "ssim", "per_sample_ssim"}
    assert len(report["MoDL"]["per_sample_ssim"]) == 4
    volumes = json.loads((out / "per_volume.json").read_text())
    assert len(volumes) == 3 * 2 and {"fname", "slices", "nmse", "psnr", "ssim", "method"} <= set(volumes[0])
    assert (out / "per_slice.csv").exists() and len(list((out / "panels").glob("*.png"))) == 2


# ---------------------------------------------------------------------------------- the configs
CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[1] / "configs"
_SMALL_SPLIT = "--data.init_args.builtin_split={train: [0], val: [3], test: [1]}"


def test_modl_config_fits_on_the_builtin_data(tmp_path, monkeypatch):
    from unroll.train.cli import main

    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(CONFIGS / "modl.yaml"), f"--trainer.default_root_dir={tmp_path}",
          "--trainer.max_steps=2", "--trainer.max_time=null", "--trainer.limit_val_batches=1",
          "--trainer.val_check_interval=2", "--model.init_args.model.init_args.num_layers=1",
          "--model.init_args.model.init_args.features=8", _SMALL_SPLIT])
    ckpt = sorted(tmp_path.rglob("last.ckpt"))
    assert ckpt
    state = torch.load(ckpt[-1], map_location="cpu", weights_only=True)
    assert state["global_step"] == 2 and state["unroll"]["model_class"] == "unroll.models.modl.MoDL"


@pytest.mark.parametrize("name", ["mri_zero_filled", "mri_cs"])
def test_baseline_configs_score_the_test_split(name, tmp_path, monkeypatch, capsys):
    from unroll.train.cli import main

    monkeypatch.chdir(tmp_path)
    extra = ["--model.init_args.model.init_args.max_iter=5"] if name == "mri_cs" else []
    main(["test", "--config", str(CONFIGS / f"{name}.yaml"), "--trainer.enable_progress_bar=false", _SMALL_SPLIT,
          *extra])
    out = capsys.readouterr().out
    assert "test/ssim" in out and "test/psnr" in out and "test/nmse" in out
