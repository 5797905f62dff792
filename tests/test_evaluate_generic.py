"""Beyond one global matrix: batches that carry their own operator and metadata, the generic
training stream, PSNR/SSIM/iteration metrics, and `unroll evaluate` on a task that declares them
(inpainting of small images, a random mask per sample)."""

from __future__ import annotations

import functools
import json
import math

import lightning as L
import pytest
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch.utils.data import default_collate

from unroll import solvers
from unroll.data import Batch, BatchStream, InpaintingDataModule, SparseRecoveryDataModule, StreamLoader
from unroll.metrics import NMSE, PSNR, SSIM, Iterations, nmse, psnr, ssim
from unroll.models import LearnedPGD
from unroll.operators import Diagonal
from unroll.prox import Box
from unroll.train import AdjointBaseline, MetricTracker, ReconstructionTask, SolverBaseline
from unroll.train.cli import main


def small_images(**kw):
    args = dict(image_size=12, noise_std=0.0, batch_size=8, train_batches=4, val_size=16, test_size=20,
                eval_batch_size=8)
    return InpaintingDataModule(**{**args, **kw})


# ---------------------------------------------------------------------------- Batch
def test_batch_collates_moves_and_selects():
    samples = [Batch(torch.full((3,), float(i)), torch.zeros(2), {"mask": torch.full((3,), float(i))},
                     {"fname": f"f{i}.h5", "slice": i, "data_range": torch.tensor(float(i + 1))}) for i in range(4)]
    b = default_collate(samples)
    assert isinstance(b, Batch) and b.batch_size == 4 and b.y.shape == (4, 3)
    assert torch.equal(b.operator["mask"][:, 0], torch.arange(4.0))
    assert b.meta["fname"] == ["f0.h5", "f1.h5", "f2.h5", "f3.h5"]
    assert torch.equal(b.meta["slice"], torch.arange(4)) and torch.equal(b.meta["data_range"], torch.arange(1.0, 5))
    # the samples back, field by field
    again = default_collate([b.select(i) for i in range(4)])
    assert torch.equal(again.operator["mask"], b.operator["mask"]) and again.meta["fname"] == b.meta["fname"]
    assert b.select(slice(1, 3)).meta["fname"] == ["f1.h5", "f2.h5"]
    # a plain (y, x) batch, as the sparse data yield: the empty mappings survive collation
    plain = default_collate([Batch(torch.ones(3), torch.zeros(2))] * 2)
    assert plain.operator == {} and plain.meta == {} and plain.y.shape == (2, 3)
    # Lightning's device transfer ("meta" stands for an accelerator) moves every tensor, in mappings
    # and in a ready operator, and keeps the type
    ready = Batch(b.y, b.x, Diagonal(b.operator["mask"], per_sample=True), b.meta)
    for batch in (b, ready):
        moved = move_data_to_device(batch, torch.device("meta"))
        assert isinstance(moved, Batch) and moved.y.is_meta and moved.meta["data_range"].is_meta
        assert moved.meta["fname"] == b.meta["fname"]
    assert move_data_to_device(b, torch.device("meta")).operator["mask"].is_meta
    assert ready.operator.diag.is_meta  # an nn.Module moves in place
    with pytest.raises(TypeError, match="operator"):
        ready.select(0)


# ---------------------------------------------------------------------------- stream
def _draw(index: int, generator: torch.Generator, size: int) -> Batch:
    x = torch.randn(size, generator=generator)
    return Batch(x + index, x)


def test_generic_stream_independent_of_workers_and_resumable():
    """Any make_batch(index, generator) gets the resumable stream: batch i is the same whatever
    the number of workers, and a stream started at batch s continues an uninterrupted one."""
    def epochs(num_workers, n=2):
        stream = BatchStream(functools.partial(_draw, size=5), batches=3, keys=(7, 3))
        loader = StreamLoader(stream, lambda: None, num_workers=num_workers)
        return [b.y for _ in range(n) for b in loader]

    whole = epochs(0)
    assert len(whole) == 6 and all(torch.equal(a, b) for a, b in zip(whole, epochs(2)))
    assert [round(float(b.y[0] - b.x[0])) for b in BatchStream(functools.partial(_draw, size=5), 3, (7, 3))] \
        == [0, 1, 2]  # index i is batch i's
    stream = BatchStream(functools.partial(_draw, size=5), batches=3, keys=(7, 3))
    stream.start = 4  # resumed after 4 batches: the rest of the second epoch
    assert [torch.equal(b.y, w) for b, w in zip(stream, whole[4:])] == [True, True]
    other = BatchStream(functools.partial(_draw, size=5), batches=3, keys=(8, 3))
    assert not torch.equal(next(iter(other)).y, whole[0])  # another seed, another stream
    with pytest.raises(ValueError, match="^batches:"):
        BatchStream(_draw, batches=0, keys=(0,))
    # the image module uses the same stream: fresh batches, each with its own mask
    dm = small_images()
    a, b = list(dm.train_dataloader())[:2]
    assert not torch.equal(a.x, b.x) and not torch.equal(a.operator["mask"], b.operator["mask"])
    assert torch.equal(small_images().train_stream().make_batch(0, dm.train_stream().generator(0)).x, a.x)


# ---------------------------------------------------------------------------- metrics
def test_psnr_ssim_iterations():
    g = torch.Generator().manual_seed(0)
    x = 2.0 * torch.rand(5, 2, 16, 16, generator=g)
    x_hat = x + 0.1 * torch.randn(x.shape, generator=g)
    mse = (x_hat - x).square().flatten(1).mean(1)
    # PSNR, closed form: per-sample data range (the target's max by default, fastMRI's convention)
    torch.testing.assert_close(psnr(x_hat, x), 10 * torch.log10(x.flatten(1).amax(1) ** 2 / mse))
    d = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    torch.testing.assert_close(psnr(x_hat, x, d), 10 * torch.log10(d ** 2 / mse))
    # SSIM with a per-sample range equals torchmetrics' SSIM of each sample with its own range
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

    ref = torch.stack([tm_ssim(x_hat[i:i + 1], x[i:i + 1], data_range=float(d[i]), gaussian_kernel=False,
                               kernel_size=7) for i in range(5)])
    torch.testing.assert_close(ssim(x_hat, x, d), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(ssim(x, x), torch.ones(5))
    assert (ssim(x_hat, x) < 1).all()
    # accumulated over two batches = the mean over all samples; data range from the batch's metadata
    m = PSNR()
    m.update(x_hat[:2], x[:2], data_range=d[:2])
    m.update(x_hat[2:], x[2:], data_range=d[2:])
    assert float(m.compute()) == pytest.approx(float((10 * torch.log10(d ** 2 / mse)).mean()), abs=1e-4)
    s = SSIM(data_range=1.0)
    s.update(x_hat, x)
    assert float(s.compute()) == pytest.approx(float(ssim(x_hat, x, 1.0).mean()), abs=1e-6)
    it = Iterations()
    it.update(torch.tensor([3, 5]))
    it.update(torch.tensor([10]))
    assert float(it.compute()) == pytest.approx(6.0)
    with pytest.raises(ValueError, match="^data_range:"):
        PSNR(data_range=-1.0)
    with pytest.raises(ValueError, match="^kernel_size:"):
        SSIM(kernel_size=4)


def test_tracker_gives_the_sparse_tasks_nmse():
    """NMSE per iterate through the generic tracker equals NMSE(num_iters=K) accumulated over the
    same batches, and its per-sample values are nmse(reduction="none")."""
    dm = SparseRecoveryDataModule(m=20, n=40, val_size=8, test_size=30, eval_batch_size=12, dtype="float64")
    tracker, ref, finals = MetricTracker({"nmse_db": NMSE()}), NMSE(num_iters=5), []
    for batch in dm.test_dataloader():
        x_hat, info = solvers.ista(dm.get_operator(), batch.y, 0.1, max_iter=5, tol=None, return_trajectory=True)
        tracker.update(info.trajectory, batch.x, iterations=info.iterations)
        ref.update(info.trajectory, batch.x)
        finals.append(nmse(x_hat, batch.x, reduction="none"))
    assert tracker.compute()["nmse_db"] == pytest.approx(ref.compute().tolist(), abs=1e-9)
    assert tracker.per_sample()["nmse_db"] == pytest.approx(torch.cat(finals).tolist(), abs=1e-9, nan_ok=True)
    with pytest.raises(ValueError, match="iterates"):
        tracker.update(info.trajectory + info.trajectory, batch.x)


# ---------------------------------------------------------------------------- task
def _task(**kw):
    # step 1/L = 1 on a 0/1 mask would land on the data in one step (a fixed point: no gradient)
    return ReconstructionTask(LearnedPGD(num_layers=3, constraint=Box(0.0, 1.0), step=0.5), **kw)


def test_task_solves_each_batch_with_its_own_operator():
    dm = small_images()
    task = _task()
    batch = next(iter(dm.test_dataloader()))
    with pytest.raises(ValueError, match=r"^batch.operator: .*\['mask'\]"):
        task.batch_operator(batch)  # parameters, but nothing builds an operator from them
    with pytest.raises(RuntimeError, match="^operator: the batch carries no operator"):
        task.batch_operator(Batch(batch.y, batch.x))
    task.operator_builder = dm.build_operator
    op = task.batch_operator(batch)
    torch.testing.assert_close(op(batch.x), batch.y)  # noiseless: y = m ⊙ x, each sample its own m
    assert not torch.equal(batch.operator["mask"][0], batch.operator["mask"][1])
    with torch.no_grad():
        together = task(batch.y, op)
        alone = [task(batch.y[i:i + 1], dm.build_operator(batch.select(slice(i, i + 1)).operator))
                 for i in range(batch.batch_size)]
    torch.testing.assert_close(together, torch.cat(alone))  # a sample's result never depends on its mates
    # a batch carrying a ready operator is solved with it
    assert task.batch_operator(Batch(batch.y, batch.x, op)) is op


def test_task_trains_on_per_batch_operators(tmp_path):
    dm = small_images(noise_std=0.1, train_batches=3)
    task = _task(optimizer=functools.partial(torch.optim.Adam, lr=0.05))
    before = [s.clone() for s in task.model.parameters()]
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path)
    trainer.fit(task, datamodule=dm)
    assert task.operator is None and task.operator_builder is not None  # no global operator: all per batch
    assert any(not torch.equal(a, b) for a, b in zip(before, task.model.parameters()))
    assert math.isfinite(float(trainer.callback_metrics["val/nmse_db"]))


@pytest.mark.parametrize("make, match", [
    (lambda: _task(metrics={}), r"^metrics: expected a non-empty mapping"),
    (lambda: _task(metrics={"psnr": 3}), r"^metrics\['psnr'\]: expected a torchmetrics.Metric, got int"),
    (lambda: _task(baselines=[3]), r"^baselines: expected a list"),
    (lambda: _task(baselines=[SolverBaseline("ista"), SolverBaseline("ista", lam=0.2)]), r"^baselines: .*distinct"),
    (lambda: SolverBaseline("cg"), r"^solver: expected one of"),
    (lambda: SolverBaseline(lam=-1.0), r"^lam: expected a finite number ≥ 0"),
    (lambda: SolverBaseline(max_iter=0), r"^max_iter:"),
    (lambda: small_images(observed=0.0), r"^observed: expected the fraction of observed pixels in \(0, 1\]"),
    (lambda: small_images(noise_std=-0.1), r"^noise_std: expected a finite number ≥ 0"),
    (lambda: small_images(image_size=1), r"^image_size: expected an integer ≥ 2"),
    (lambda: small_images(eval_batch_size=0), r"^eval_batch_size:"),
])
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_default_declarations_are_the_sparse_tasks():
    task = _task()
    assert list(task.metrics) == ["nmse_db"] and isinstance(task.metrics["nmse_db"], NMSE)
    assert [(b.name, b.description(0.1)) for b in task.baselines] == [("ista", "ista (λ=0.1)"),
                                                                      ("fista", "fista (λ=0.1)")]
    assert isinstance(AdjointBaseline().run(Diagonal(torch.ones(3)), torch.ones(2, 3), 5, 0.1).trajectory[0],
                      torch.Tensor)


# ---------------------------------------------------------------------------- unroll evaluate
CONFIG = """
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 1
  max_steps: 6
  logger: false
  enable_progress_bar: false
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: {ckpts}, save_last: true}}
model:
  class_path: unroll.train.ReconstructionTask
  init_args:
    model:
      class_path: unroll.models.LearnedPGD
      init_args:
        num_layers: 3
        step: 0.5
        constraint: {{class_path: unroll.prox.Box, init_args: {{lo: 0.0, hi: 1.0}}}}
    metrics:
      psnr_db: {{class_path: unroll.metrics.PSNR}}
      ssim: {{class_path: unroll.metrics.SSIM}}
      iterations: {{class_path: unroll.metrics.Iterations}}
    baselines:
      - class_path: unroll.train.AdjointBaseline
      - class_path: unroll.train.SolverBaseline
        init_args: {{solver: fista, lam: 0.01, tol: 0.001, max_iter: 30}}
    optimizer: {{class_path: torch.optim.Adam, init_args: {{lr: 0.05}}}}
data:
  class_path: unroll.data.InpaintingDataModule
  init_args: {{image_size: 12, noise_std: 0.05, batch_size: 8, train_batches: 4, val_size: 16, test_size: 20,
               eval_batch_size: 8}}
"""


def test_evaluate_reports_the_metrics_and_baselines_the_task_declares(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "inpaint.yaml"
    cfg.write_text(CONFIG.format(ckpts=tmp_path / "ckpts"))
    main(["fit", "--config", str(cfg)])
    ckpt = tmp_path / "ckpts" / "last.ckpt"
    out = tmp_path / "eval"
    capsys.readouterr()
    main(["evaluate", "--ckpt_path", str(ckpt), "--output_dir", str(out)])  # from the checkpoint's own config
    printed = capsys.readouterr().out

    report = json.loads((out / "metrics.json").read_text())
    assert list(report) == ["LearnedPGD", "adjoint", "fista"]
    for method, depth in (("LearnedPGD", 3), ("adjoint", 1), ("fista", 30)):
        r = report[method]
        assert set(r) == {"psnr_db", "ssim", "iterations", "per_sample_psnr_db", "per_sample_ssim",
                          "per_sample_iterations"}
        assert len(r["psnr_db"]) == len(r["ssim"]) == depth and len(r["iterations"]) == 1
        assert all(len(r[f"per_sample_{k}"]) == 20 for k in ("psnr_db", "ssim", "iterations"))
        assert all(0 < v <= 1 for v in r["per_sample_ssim"])
        assert r["psnr_db"][-1] == pytest.approx(sum(r["per_sample_psnr_db"]) / 20, abs=1e-3)

    # independent references on the same test split
    dm = small_images(noise_std=0.05)
    test = dm.test_split
    mse = lambda a: (a - test.x).square().flatten(1).mean(1)  # noqa: E731
    # the zero-filled baseline is y itself; the images' range is 1
    assert report["adjoint"]["per_sample_psnr_db"] == pytest.approx((-10 * torch.log10(mse(test.y))).tolist(),
                                                                    abs=1e-3)
    task = ReconstructionTask.load_from_checkpoint(str(ckpt))
    with torch.no_grad():
        out_model = task(test.y, Diagonal(test.operator["mask"], per_sample=True), return_trajectory=True)
    assert report["LearnedPGD"]["per_sample_psnr_db"] == pytest.approx(
        (-10 * torch.log10(mse(out_model.x))).tolist(), abs=1e-3)
    assert report["LearnedPGD"]["psnr_db"][0] == pytest.approx(
        float((-10 * torch.log10(mse(out_model.trajectory[0]))).mean()), abs=1e-3)
    assert report["LearnedPGD"]["iterations"] == [3.0]
    fista_iters = torch.cat([solvers.fista(Diagonal(b.operator["mask"], per_sample=True), b.y, 0.01, max_iter=30,
                                           tol=1e-3)[1].iterations for b in dm.test_dataloader()])
    assert report["fista"]["per_sample_iterations"] == fista_iters.double().tolist()

    # the same table, CSV and plots as the sparse tasks, one group per metric
    keys = ("psnr_db", "ssim", "iterations")
    methods = ("LearnedPGD", "adjoint", "fista")
    header = [f"{m}_{k}" for k in keys for m in methods]
    lines = (out / "metrics.csv").read_text().splitlines()
    assert lines[0] == ",".join(["iteration", *header]) and len(lines) == 1 + 30
    assert (out / "per_sample.csv").read_text().splitlines()[0] == ",".join(["sample", *header])
    for plot in ("psnr.png", "ssim.png", "iterations.png"):
        assert (out / plot).read_bytes()[:4] == b"\x89PNG"
    assert not (out / "nmse.png").exists()
    assert "LearnedPGD PSNR (dB)" in printed and "fista SSIM" in printed
    # a once-per-run metric (the iteration count) is one table of one row per method, not a curve
    assert "per run" in printed and "adjoint" in printed.split("per run")[1]
    assert "LearnedPGD iterations" not in printed
