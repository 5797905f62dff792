"""Tests for unroll.data: generation, the standard problem, HDF5 I/O and the datamodule."""

import math
import warnings

import h5py
import numpy as np
import pytest
import torch

from unroll.data import (Batch, SparseRecoveryDataModule, load_standard_problem, make_sparse_signals, measure,
                         read_splits_h5, write_splits_h5)
from unroll.operators import MatrixOperator

SMALL = dict(m=20, n=40, val_size=30, test_size=25, batch_size=8, train_batches=5)


def small(**kw):
    return SparseRecoveryDataModule(**{**SMALL, **kw})


# ---------------------------------------------------------------------------- generation
def test_gaussian_matrix_unit_columns_and_reproducible():
    a, b, c = small(seed=3), small(seed=3), small(seed=4)
    a.setup("fit"), b.setup("fit"), c.setup("fit")
    assert a.A.shape == (20, 40) and a.A.dtype == torch.float32
    torch.testing.assert_close(torch.linalg.vector_norm(a.A.double(), dim=0), torch.ones(40, dtype=torch.float64),
                               atol=1e-6, rtol=0)
    assert torch.equal(a.A, b.A)
    assert torch.equal(a.val_split.y, b.val_split.y) and torch.equal(a.val_split.x, b.val_split.x)
    assert torch.equal(a.test_split.y, b.test_split.y) and torch.equal(a.test_split.x, b.test_split.x)
    assert not torch.equal(a.A, c.A)
    assert not torch.equal(a.val_split.x, c.val_split.x)
    # val and test are independent draws
    assert not torch.equal(a.val_split.x[:25], a.test_split.x)
    assert a.describe()["operator_fingerprint"] == b.describe()["operator_fingerprint"]
    assert a.describe()["operator_fingerprint"] != c.describe()["operator_fingerprint"]


def test_setup_idempotent_and_operator():
    dm = small()
    op = dm.get_operator()  # builds on demand
    assert isinstance(op, MatrixOperator)
    A, val = dm.A, dm.val_split
    dm.setup("fit"), dm.setup("test")
    assert dm.A is A and dm.val_split is val and dm.operator is op
    torch.testing.assert_close(op(val.x), val.y)
    d = dm.describe()
    assert (d["problem"], d["m"], d["n"], d["p"], d["snr_db"]) == ("gaussian", 20, 40, 0.1, None)


def test_float64_matches_float32_splits():
    a, b = small(dtype="float32"), small(dtype="float64")
    assert b.A.dtype == torch.float64 and b.val_split.y.dtype == torch.float64
    assert torch.equal(a.A, b.A.float()) and torch.equal(a.val_split.x, b.val_split.x.float())


def test_bernoulli_gaussian_statistics():
    n, batch, p = 500, 400, 0.1
    g = torch.Generator().manual_seed(0)
    x = make_sparse_signals(n, batch, p, g, torch.float64)
    assert x.shape == (batch, n) and x.dtype == torch.float64
    frac = (x != 0).double().mean().item()
    std = math.sqrt(p * (1 - p) / (n * batch))
    assert abs(frac - p) < 3 * std
    nz = x[x != 0]
    assert abs(nz.mean().item()) < 0.05 and abs(nz.std().item() - 1) < 0.05
    assert (make_sparse_signals(10, 3, 1.0, g) != 0).all()


def test_measure_noiseless_and_snr():
    g = torch.Generator().manual_seed(1)
    A = torch.randn(250, 500, generator=g, dtype=torch.float64) / math.sqrt(250)
    x = make_sparse_signals(500, 1000, 0.1, g, torch.float64)
    clean = x @ A.T
    assert torch.equal(measure(A, x), clean)
    torch.testing.assert_close(measure(MatrixOperator(A), x), clean)
    y = measure(A, x, snr_db=20, generator=g)
    noise = y - clean
    snr = 20 * math.log10(clean.std().item() / noise.std().item())
    assert abs(snr - 20) < 0.5
    with pytest.raises(ValueError, match="x: expected shape"):
        measure(A, x[:, :499])
    with pytest.raises(ValueError, match="snr_db"):
        measure(A, x, snr_db=float("nan"))


def test_datamodule_noise_level():
    dm = small(snr_db=20.0, m=100, n=200, val_size=500, dtype="float64")
    val = dm.val_split
    clean = val.x @ dm.A.T
    snr = 20 * math.log10(clean.std().item() / (val.y - clean).std().item())
    assert abs(snr - 20) < 0.5


# ---------------------------------------------------------------------------- training stream
def test_training_stream_is_indexed_by_batch_not_by_worker_or_restart():
    """Batch i of the stream is the same whatever the workers; a stream started at batch s
    yields the uninterrupted stream's batches from s on, first finishing s's epoch."""
    dm = SparseRecoveryDataModule(problem="gaussian", m=10, n=20, train_batches=4, val_size=8, test_size=8)
    dm.setup("fit")
    whole = [b.x for b in dm.train_dataloader()] + [b.x for b in dm.train_dataloader()]  # 2 epochs
    two = SparseRecoveryDataModule(problem="gaussian", m=10, n=20, train_batches=4, val_size=8, test_size=8,
                                   num_workers=2)
    got = [b.x for b in two.train_dataloader()] + [b.x for b in two.train_dataloader()]
    assert all(torch.equal(a, b) for a, b in zip(whole, got)) and len(got) == 8
    stream = dm.train_stream()  # the BatchStream of the module's make_batch
    stream.start = 6  # a run resumed after 6 batches: the rest of epoch 2
    assert [torch.equal(b.x, w) for b, w in zip(stream, whole[6:])] == [True, True]
    stream.start = 8  # at an epoch's end: a whole new epoch, batches never seen
    third = [b.x for b in stream]
    assert len(third) == 4 and not any(torch.equal(third[0], w) for w in whole)


def test_resumed_run_equals_uninterrupted(tmp_path):
    """A stage-wise run resumed from a checkpoint saved at a validation (mid-epoch, or at an
    epoch's end) ends with the same weights, to the bit, as the run never interrupted: data
    stream, optimiser, loops and the StageWise schedule are all restored."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from unroll.models import LISTACP
    from unroll.train import ReconstructionTask, StageWise

    def fit(ckpt=None, save=False):
        L.seed_everything(0)
        dm = SparseRecoveryDataModule(problem="gaussian", m=20, n=40, train_batches=10, val_size=32, test_size=32)
        task = ReconstructionTask(LISTACP(num_layers=3, init="analytic"), scalar_lr_factor=10.0)
        cbs = [StageWise(patience=1, time_aware=False, warm_start=True)]  # the clock would make it differ
        if save:
            cbs.append(ModelCheckpoint(dirpath=tmp_path, filename="{step}", save_top_k=-1))  # at every validation
        trainer = L.Trainer(max_steps=40, val_check_interval=5, logger=False, enable_checkpointing=save,
                            callbacks=cbs, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
        trainer.fit(task, datamodule=dm, ckpt_path=ckpt)
        return task.state_dict(), cbs[0].history

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        whole, history = fit(save=True)
    # the stream deals its batches out between workers: Lightning's duplicate-data warning is silenced
    assert not [w for w in caught if "IterableDataset" in str(w.message)]
    assert history and history[0]["step"] > 25  # the schedule moves on after every resume point below
    for step in (15, 20, 25):  # 10 batches per epoch: mid-epoch, an epoch's end, mid-epoch
        resumed, resumed_history = fit(ckpt=str(tmp_path / f"step={step}.ckpt"))
        assert all(torch.equal(whole[k], resumed[k]) for k in whole), step
        assert resumed_history == history


def test_training_stream_fresh_and_sized():
    dm = SparseRecoveryDataModule(train_batches=4, val_size=10, test_size=10)
    dm.setup("fit")
    epoch1 = list(dm.train_dataloader())
    epoch2 = list(dm.train_dataloader())
    assert len(epoch1) == len(epoch2) == 4 and len(dm.train_dataloader()) == 4
    for b in epoch1:
        assert isinstance(b, Batch)
        assert b.y.shape == (64, 250) and b.x.shape == (64, 500) and b.y.dtype == torch.float32
        torch.testing.assert_close(b.y, b.x @ dm.A.T)
    batches = epoch1 + epoch2
    for i in range(len(batches) - 1):
        assert not torch.equal(batches[i].x, batches[i + 1].x)
    assert not torch.equal(epoch1[0].x, epoch2[0].x)  # epochs continue the stream
    # reproducible: a fresh module with the same seed starts the same stream
    again = SparseRecoveryDataModule(train_batches=4, val_size=10, test_size=10)
    assert torch.equal(next(iter(again.train_dataloader())).x, epoch1[0].x)
    # the training stream is not the validation split
    assert not torch.equal(epoch1[0].x[:10], dm.val_split.x)


def test_eval_dataloaders():
    dm = small(eval_batch_size=16)
    for loader, split in ((dm.val_dataloader(), dm.val_split), (dm.test_dataloader(), dm.test_split),
                          (dm.predict_dataloader(), dm.test_split)):
        got = list(loader)
        assert all(isinstance(b, Batch) for b in got)
        assert [b.y.shape[0] for b in got] == [16, split.y.shape[0] - 16]
        assert torch.equal(torch.cat([b.y for b in got]), split.y)
        assert torch.equal(torch.cat([b.x for b in got]), split.x)


# ---------------------------------------------------------------------------- standard problem
def test_standard_problem():
    std = load_standard_problem()
    assert std["A"].shape == (250, 500) and std["A"].dtype == torch.float64
    assert std["W"].shape == (250, 500) and std["x_test"].shape == (1000, 500)
    dm = SparseRecoveryDataModule(problem="standard", dtype="float64", val_size=10)
    assert torch.equal(dm.A, std["A"])
    assert torch.equal(dm.test_split.x, std["x_test"].double())
    torch.testing.assert_close(dm.test_split.y, dm.test_split.x @ dm.A.T)
    assert dm.val_split.x.shape == (10, 500)
    # fewer test signals: the first ones
    dm2 = SparseRecoveryDataModule(problem="standard", test_size=7, val_size=10)
    assert torch.equal(dm2.test_split.x, std["x_test"][:7])
    assert dm2.describe()["m"] == 250
    # noisy variant: seeded noise
    n1 = SparseRecoveryDataModule(problem="standard", snr_db=30.0, val_size=10, test_size=20)
    n2 = SparseRecoveryDataModule(problem="standard", snr_db=30.0, val_size=10, test_size=20)
    assert torch.equal(n1.test_split.y, n2.test_split.y)
    assert torch.equal(n1.test_split.x, std["x_test"][:20])
    clean = n1.test_split.x @ n1.A.T
    snr = 20 * math.log10(clean.std().item() / (n1.test_split.y - clean).std().item())
    assert abs(snr - 30) < 1.0


def test_standard_problem_matches_raw_files():
    import importlib.resources as r

    import scipy.io
    root = r.files("unroll.data") / "assets" / "lista"
    with r.as_file(root / "D.mat") as p:
        D = scipy.io.loadmat(str(p))["D"]
    with r.as_file(root / "xtest_n500_p10.npy") as p:
        X = np.load(p)
    std = load_standard_problem()
    assert np.array_equal(std["A"].numpy(), D)
    assert np.array_equal(std["x_test"].numpy(), X.T)


# ---------------------------------------------------------------------------- HDF5
def test_h5_round_trip(tmp_path):
    path = tmp_path / "sub" / "problem.h5"
    a = small(seed=7, snr_db=30.0)
    a.write_h5(str(path))
    assert path.exists() and not (tmp_path / "sub" / "problem.h5.tmp").exists()
    b = small(seed=123, snr_db=30.0, h5_path=str(path))  # different seed: the file wins
    assert torch.equal(a.A, b.A)
    for s in ("val_split", "test_split"):
        assert torch.equal(getattr(a, s).y, getattr(b, s).y) and torch.equal(getattr(a, s).x, getattr(b, s).x)
    assert b.describe()["source"] == str(path)
    assert b.describe()["operator_fingerprint"] == a.describe()["operator_fingerprint"]
    A, splits, attrs = read_splits_h5(path)
    assert A.dtype == torch.float64 and set(splits) == {"val", "test"}
    assert attrs["problem"] == "gaussian" and attrs["seed"] == 7 and attrs["snr_db"] == 30.0
    # sizes from the file, m/n from the file when unset
    c = SparseRecoveryDataModule(h5_path=str(path))
    with pytest.warns(UserWarning, match="made with snr_db=30.0"):
        c.setup()
    assert (c.m, c.n, c.val_split.y.shape[0]) == (20, 40, 30)
    with pytest.raises(ValueError, match="m: got m=21"):
        SparseRecoveryDataModule(m=21, h5_path=str(path)).setup()


@pytest.fixture
def h5file(tmp_path):
    path = tmp_path / "f.h5"
    small().write_h5(str(path))
    return str(path)


def test_h5_missing_key(h5file):
    with h5py.File(h5file, "a") as f:
        del f["test/x"]
    with pytest.raises(ValueError) as e:
        read_splits_h5(h5file)
    msg = str(e.value)
    assert "'test/x'" in msg and h5file in msg and "found: A, test/y, val/x, val/y" in msg
    with pytest.raises(ValueError, match="test/x"):
        small(h5_path=h5file).setup()
    # only the requested splits are required
    _, splits, _ = read_splits_h5(h5file, splits=("val",))
    assert list(splits) == ["val"]


def test_h5_wrong_shape(h5file):
    with h5py.File(h5file, "a") as f:
        y = f["test/y"][()]
        del f["test/y"]
        f["test/y"] = y[:, :19]
    with pytest.raises(ValueError) as e:
        read_splits_h5(h5file)
    msg = str(e.value)
    assert "'test/y'" in msg and "(25, 19)" in msg and "(25, 20)" in msg and h5file in msg


def test_h5_wrong_x_shape_and_bad_A(tmp_path):
    path = str(tmp_path / "g.h5")
    A = torch.randn(5, 8)
    with pytest.raises(ValueError, match=r"splits\['val'\].x"):
        write_splits_h5(path, A, {"val": Batch(torch.randn(3, 5), torch.randn(2, 8))}, {})
    with h5py.File(path, "w") as f:
        f["A"] = np.zeros(5)
    with pytest.raises(ValueError, match="'A' has shape"):
        read_splits_h5(path)


def test_h5_nan(h5file):
    with h5py.File(h5file, "a") as f:
        f["val/y"][0, :3] = np.nan
    with pytest.raises(ValueError, match=r"'val/y' contains 3 NaN/Inf"):
        read_splits_h5(h5file)
    dm = small(h5_path=h5file)
    with pytest.raises(ValueError, match="NaN"):
        dm.setup("fit")


def test_h5_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        read_splits_h5(tmp_path / "nope.h5")
    # a typo in a data path is an error naming the argument and the path, not a silent generation
    with pytest.raises(FileNotFoundError, match=r"^h5_path: no such file: .*nope\.h5.*create_h5"):
        small(h5_path=str(tmp_path / "nope.h5"))
    # writing a new file is its own, explicit option: generated from the seed, written, then read
    path = tmp_path / "new" / "made.h5"
    dm = small(h5_path=str(path), create_h5=True)
    dm.setup()
    assert path.exists() and dm.describe()["source"] == str(path)
    assert torch.equal(dm.A, small().A) and torch.equal(dm.test_split.y, small().test_split.y)
    # an existing file is read, never overwritten
    stamp = path.stat().st_mtime_ns
    again = small(h5_path=str(path), create_h5=True, seed=5)
    assert torch.equal(again.A, dm.A) and path.stat().st_mtime_ns == stamp


def test_h5_missing_file_from_the_cli(tmp_path, monkeypatch):
    """`unroll fit --data.init_args.h5_path=<typo>` fails before training, naming the argument."""
    from unroll.train.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["unroll"])
    cfg = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "configs" / "learned_ista.yaml")
    # (jsonargparse may wrap the data module's error in its own ValueError: the message is kept)
    with pytest.raises((FileNotFoundError, ValueError), match="h5_path: no such file: 'typo.h5'"):
        main(["fit", "--config", cfg, "--data.init_args.h5_path=typo.h5", "--trainer.max_steps=1",
              f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false"])
    assert not list(tmp_path.rglob("*.ckpt"))


# ---------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize("kw, name", [
    (dict(p=0), "p"), (dict(p=1.5), "p"), (dict(p=float("nan")), "p"),
    (dict(batch_size=0), "batch_size"), (dict(train_batches=0), "train_batches"),
    (dict(val_size=0), "val_size"), (dict(test_size=-1), "test_size"), (dict(m=0), "m"),
    (dict(snr_db=float("inf")), "snr_db"), (dict(dtype="float16"), "dtype"), (dict(problem="foo"), "problem"),
    (dict(problem="standard", m=100), "m"), (dict(problem="standard", n=400), "n"),
    (dict(problem="standard", test_size=1001), "test_size"), (dict(seed=-1), "seed"),
    (dict(eval_batch_size=0), "eval_batch_size"), (dict(num_workers=-1), "num_workers"),
    (dict(h5_path=3), "h5_path"), (dict(create_h5="yes"), "create_h5"),
])
def test_bad_args(kw, name):
    with pytest.raises(ValueError, match=rf"^{name}:"):
        SparseRecoveryDataModule(**kw)


def test_standard_accepts_matching_sizes():
    dm = SparseRecoveryDataModule(problem="standard", m=250, n=500, val_size=5, test_size=5)
    assert dm.A.shape == (250, 500)
