"""Checkpoints that survive crashes and hostile files (issue 20): never executed, verified, atomic;
a clear error for a negative learning rate; lista_family's --reuse refuses stale checkpoints."""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

from unroll.train import AtomicCheckpointIO, CheckpointError, ReconstructionTask, load_checkpoint, verify_checkpoint
from unroll.train.cli import UnrollCLI, main
from unroll.train.evaluate import evaluate_main

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "alista.yaml")


def tiny(tmp_path, steps=3):
    return [
        f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.max_time=null", f"--trainer.max_steps={steps}",
        "--data.init_args.problem=gaussian", "--data.init_args.m=20", "--data.init_args.n=40",
        "--data.init_args.train_batches=2", "--data.init_args.val_size=32", "--data.init_args.test_size=32",
        "--data.init_args.seed=0", "--model.init_args.model.init_args.num_layers=3",
        "--trainer.val_check_interval=1.0",
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real checkpoint of `unroll fit` (ALISTA, 3 layers, 3 steps; dense matrix operator)."""
    folder = tmp_path_factory.mktemp("fit")
    cwd = os.getcwd()
    os.chdir(folder)
    old_argv = sys.argv
    sys.argv = ["unroll"]
    try:
        main(["fit", "--config", CONFIG, *tiny(folder)])
    finally:
        os.chdir(cwd)
        sys.argv = old_argv
    ckpt = folder / "alista" / "version_0" / "checkpoints" / "last.ckpt"  # <save_dir>/<config>/<run>
    assert ckpt.is_file(), sorted(str(p.relative_to(folder)) for p in folder.rglob("*.ckpt"))
    return ckpt


@pytest.fixture
def good(trained, tmp_path):
    """A private copy of the trained checkpoint."""
    dst = tmp_path / "good.ckpt"
    dst.write_bytes(trained.read_bytes())
    return dst


def _evaluate(ckpt, tmp_path, *extra):
    return evaluate_main(["--ckpt_path", str(ckpt), "--output_dir", str(tmp_path / "eval"), *extra])


def _one_line(e: BaseException, path) -> str:
    msg = str(e)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


# ---------------------------------------------------------------- never executed
class _Payload:
    """Unpickling it creates the marker file (the proof that a file ran code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def _crafted(tmp_path, good, kind):
    marker = tmp_path / "marker"
    path = tmp_path / f"evil_{kind}.ckpt"
    if kind == "zip":  # a real checkpoint with a payload in its hyper-parameters: the zip checks pass
        ckpt = torch.load(good, weights_only=True)
        ckpt["hyper_parameters"]["payload"] = _Payload(marker)
        torch.save(ckpt, path)
    else:  # a plain pickle, as torch's legacy format or any foreign file
        path.write_bytes(pickle.dumps({"state_dict": {}, "payload": _Payload(marker)}, protocol=2))
    return path, marker


@pytest.mark.parametrize("kind", ["zip", "pickle"])
def test_crafted_pickle_never_runs_through_evaluate_load_from_checkpoint_or_fit(tmp_path, good, kind, monkeypatch):
    path, marker = _crafted(tmp_path, good, kind)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="could run code|cannot be verified and loading it could run code") as e:
        ReconstructionTask.load_from_checkpoint(path)
    msg = _one_line(e.value, path)
    assert "trust" in msg
    with pytest.raises(CheckpointError, match="run code"):
        _evaluate(path, tmp_path)  # the config embedded in the checkpoint
    with pytest.raises(CheckpointError, match="run code"):
        _evaluate(path, tmp_path, "--config", CONFIG, *tiny(tmp_path))  # Trainer.test's loader
    with pytest.raises(CheckpointError, match="run code"):
        main(["fit", "--config", CONFIG, *tiny(tmp_path), "--ckpt_path", str(path)])  # Lightning's resume
    with pytest.raises(CheckpointError):
        verify_checkpoint(path)
    assert not marker.exists()
    # the opt-in reaches torch.load: a trusted file is unpickled (positive control of this test)
    try:  # Lightning's spelling of the opt-in
        ReconstructionTask.load_from_checkpoint(path, weights_only=False)
    except ValueError:  # the plain pickle is no unroll checkpoint: refused after unpickling
        assert kind == "pickle"
    assert marker.exists()


def test_evaluate_trust_checkpoint_flag_loads_a_trusted_file(tmp_path, good):
    """--trust_checkpoint: what was refused is unpickled (here the marker proves it)."""
    path, marker = _crafted(tmp_path, good, "zip")
    curves = _evaluate(path, tmp_path, "--trust_checkpoint")
    assert marker.exists() and set(curves) == {"ALISTA", "ista", "fista"}
    marker.unlink()
    assert ReconstructionTask.load_from_checkpoint(path, trust=True).num_layers == 3 and marker.exists()


# ---------------------------------------------------------------- verified
def test_a_good_checkpoint_verifies_and_loads(good, tmp_path):
    info = verify_checkpoint(good)
    assert info["model_class"] == "unroll.models.alista.ALISTA" and info["num_layers"] == 3
    assert info["operator_check"] == "ok" and info["global_step"] == 3 and info["has_config"]
    task = ReconstructionTask.load_from_checkpoint(good)
    assert task.operator.fingerprint() == info["operator_fingerprint"]
    assert set(_evaluate(good, tmp_path)) == {"ALISTA", "ista", "fista"}
    from unroll.train.verify import main as verify_main

    assert verify_main([str(good)]) == 0 and verify_main([str(good), str(tmp_path / "missing.ckpt")]) == 1


def test_file_objects_are_checked_too(good):
    import io

    task = ReconstructionTask.load_from_checkpoint(io.BytesIO(good.read_bytes()))
    assert task.operator.fingerprint() == verify_checkpoint(good)["operator_fingerprint"]
    with open(good, "rb") as f:
        half = io.BytesIO(f.read()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="<file object>: truncated or damaged"):
        ReconstructionTask.load_from_checkpoint(half)


def _record_offset(path, name):
    """File offset of the data of zip record ``name`` (after its local header)."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def _matrix_record(path):
    matrix = torch.load(path, weights_only=True)["state_dict"]["operator.matrix"]
    raw = matrix.contiguous().numpy().tobytes()
    with zipfile.ZipFile(path) as zf:
        found = [n for n in zf.namelist() if "/data/" in n and zf.read(n) == raw]
    assert len(found) == 1
    return found[0]


def test_one_byte_flipped_in_the_stored_operator_matrix_is_refused(good, tmp_path):
    offset, size = _record_offset(good, _matrix_record(good))
    data = bytearray(good.read_bytes())
    data[offset + size // 2] ^= 0x10
    good.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="CRC") as e:
        ReconstructionTask.load_from_checkpoint(good)
    _one_line(e.value, good)
    with pytest.raises(CheckpointError, match="CRC"):
        _evaluate(good, tmp_path)
    with pytest.raises(CheckpointError, match="CRC"):
        _evaluate(good, tmp_path, "--config", CONFIG, *tiny(tmp_path))
    with pytest.raises(CheckpointError, match="CRC"):
        verify_checkpoint(good)


def test_an_edited_operator_with_valid_crcs_fails_its_fingerprint(good, tmp_path):
    """A re-saved checkpoint whose matrix changed (CRCs intact): the operator the model and the
    baselines would run on no longer matches the recorded fingerprint."""
    ckpt = torch.load(good, weights_only=True)
    ckpt["state_dict"]["operator.matrix"][0, 0] += 1e-3
    torch.save(ckpt, good)
    for load in (lambda: ReconstructionTask.load_from_checkpoint(good), lambda: verify_checkpoint(good),
                 # evaluate: the data module's operator matches the recorded fingerprint, the stored one does not
                 lambda: _evaluate(good, tmp_path)):
        with pytest.raises(CheckpointError, match="does not match the one recorded") as e:
            load()
        _one_line(e.value, good)


def _bad_file(kind, good, tmp_path):
    path = tmp_path / f"{kind}.ckpt"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "text":
        path.write_text("model:\n  class_path: unroll.models.ALISTA\n")
    elif kind == "hdf5":
        import h5py

        with h5py.File(path, "w") as f:
            f["y"] = torch.zeros(3, 4).numpy()
    elif kind == "foreign_zip":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("readme.txt", "hello")
    return path


BAD = {"empty": "empty", "truncated": "truncated or damaged", "text": "a text file", "hdf5": "an HDF5 file",
       "foreign_zip": "not a PyTorch checkpoint"}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_files_give_one_clear_line(kind, good, tmp_path):
    path = _bad_file(kind, good, tmp_path)
    for load in (lambda: ReconstructionTask.load_from_checkpoint(path), lambda: _evaluate(path, tmp_path),
                 lambda: _evaluate(path, tmp_path, "--config", CONFIG, *tiny(tmp_path)),
                 lambda: verify_checkpoint(path)):
        with pytest.raises(CheckpointError) as e:
            load()
        msg = _one_line(e.value, path)
        assert BAD[kind] in msg, msg
        # no chained EOFError/IndexError/UnpicklingError under it
        assert e.value.__cause__ is None and (e.value.__context__ is None or e.value.__suppress_context__)


# ---------------------------------------------------------------- atomic
@pytest.fixture
def private_tmpdir(tmp_path, monkeypatch):
    """The system temp folder, empty: nothing may be left in it."""
    d = tmp_path / "systmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def _state(v):
    return {"state_dict": {"w": torch.full((1000,), float(v))}, "global_step": v}


def _partial_save(exc):
    real = torch.save

    def save(obj, f, *args, **kwargs):  # half a checkpoint reaches the disk, then the write fails
        real(obj, f, *args, **kwargs)
        with open(f, "r+b") as fh:
            fh.truncate(os.path.getsize(f) // 2)
        raise exc
    return save


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), OSError(errno.ENOSPC, "No space left on device")])
def test_a_failed_write_keeps_the_previous_checkpoint_and_leaves_no_temp_file(tmp_path, private_tmpdir, monkeypatch,
                                                                            exc):
    io_ = AtomicCheckpointIO()
    folder = tmp_path / "on_other_fs"
    last = folder / "last.ckpt"
    io_.save_checkpoint(_state(1), last)
    monkeypatch.setattr(torch, "save", _partial_save(exc))
    with pytest.raises(type(exc)):
        io_.save_checkpoint(_state(2), last)  # overwriting last.ckpt
    with pytest.raises(type(exc)):
        io_.save_checkpoint(_state(3), folder / "latest-step=3.ckpt")  # a new name
    monkeypatch.undo()
    assert io_.load_checkpoint(last)["global_step"] == 1  # the previous state, intact
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]  # no partial file, no temp file
    assert list(private_tmpdir.iterdir()) == []


def test_a_failed_rename_keeps_the_previous_checkpoint(tmp_path, monkeypatch, private_tmpdir):
    io_ = AtomicCheckpointIO()
    last = tmp_path / "last.ckpt"
    io_.save_checkpoint(_state(1), last)

    def replace(src, dst):  # killed (or cross-device) at the rename
        raise OSError(errno.EXDEV, "Invalid cross-device link")
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError):
        io_.save_checkpoint(_state(2), last)
    monkeypatch.undo()
    assert load_checkpoint(last)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir() if p.name != "systmp"] == ["last.ckpt"]
    assert list(private_tmpdir.iterdir()) == []


@pytest.fixture
def other_fs(tmp_path):
    """A folder on another filesystem than the temp folder (tmpfs /dev/shm when there is one),
    where a move from the temp folder would be a copy over the old file."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != Path(tempfile.gettempdir()).stat().st_dev:
        d = Path(tempfile.mkdtemp(prefix="unroll-test-", dir=shm))
        yield d
        import shutil

        shutil.rmtree(d, ignore_errors=True)
    else:
        yield tmp_path / "ckpts"


def test_kill_9_during_a_checkpoint_write_leaves_the_previous_one_loadable(tmp_path, other_fs):
    """A real SIGKILL in the middle of writing the new last.ckpt (the child has written part of
    it and waits): the old last.ckpt still loads; only a hidden temporary file is left beside it."""
    folder, systmp = other_fs, tmp_path / "systmp"
    systmp.mkdir()
    child = textwrap.dedent(f"""
        import os, sys, time, torch
        from unroll.train import AtomicCheckpointIO
        io_ = AtomicCheckpointIO()
        last = {str(folder / "last.ckpt")!r}
        io_.save_checkpoint({{"state_dict": {{"w": torch.ones(1000)}}, "global_step": 1}}, last)
        real = torch.save
        def save(obj, f, *a, **k):
            real(obj, f, *a, **k)
            with open(f, "r+b") as fh:
                fh.truncate(os.path.getsize(f) // 2)
            print("writing", flush=True)
            time.sleep(600)
        torch.save = save
        io_.save_checkpoint({{"state_dict": {{"w": torch.zeros(1000)}}, "global_step": 2}}, last)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, TMPDIR=str(systmp)))
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert load_checkpoint(folder / "last.ckpt")["global_step"] == 1
    assert [p.name for p in folder.iterdir() if p.suffix == ".ckpt"] == ["last.ckpt"]
    assert all(p.name.startswith(".last.ckpt.") for p in folder.iterdir() if p.name != "last.ckpt")
    assert list(systmp.iterdir()) == []


def test_a_disk_full_during_fit_leaves_only_whole_checkpoints(tmp_path, monkeypatch, private_tmpdir):
    """`unroll fit` whose second round of checkpoint writes hits a full disk: every *.ckpt left
    verifies, last.ckpt is the previous round's, and no temporary file is left anywhere."""
    monkeypatch.chdir(tmp_path)
    real, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) <= 2:  # the first validation's best and last
            return real(obj, f, *args, **kwargs)
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04" + bytes(100))
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(OSError, match="No space left"):
        main(["fit", "--config", CONFIG, *tiny(tmp_path, steps=6)])
    monkeypatch.undo()
    folder = tmp_path / "alista" / "version_0" / "checkpoints"  # <save_dir>/<config>/<run>
    assert len(calls) == 3 and all(Path(c).parent == folder for c in calls)  # temp files in the target folder
    names = sorted(p.name for p in folder.iterdir())
    assert all(n.endswith(".ckpt") for n in names) and "last.ckpt" in names, names
    for n in names:
        assert verify_checkpoint(folder / n)["global_step"] == 2
    assert list(private_tmpdir.iterdir()) == []


def test_the_cli_writes_checkpoints_atomically_by_default(tmp_path, monkeypatch, trained):
    from lightning.pytorch.plugins import TorchCheckpointIO

    monkeypatch.chdir(tmp_path)
    cli = UnrollCLI(args=["--config", CONFIG, *tiny(tmp_path)], run=False)
    assert type(cli.trainer.strategy.checkpoint_io) is AtomicCheckpointIO
    cli = UnrollCLI(args=["--config", CONFIG, *tiny(tmp_path),
                          "--trainer.plugins=lightning.pytorch.plugins.TorchCheckpointIO"], run=False)
    assert type(cli.trainer.strategy.checkpoint_io) is TorchCheckpointIO  # the user's choice is kept
    # the fixture's run left only checkpoints (no temporary files) in its folder
    assert all(p.suffix == ".ckpt" for p in trained.parent.iterdir())


# ---------------------------------------------------------------- negative learning rate
def test_a_negative_learning_rate_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"optimizer\.init_args\.lr: .*torch\.optim\.adam\.Adam, got -0\.1") as e:
        main(["fit", "--config", CONFIG, *tiny(tmp_path), "--model.init_args.optimizer.init_args.lr=-0.1"])
    assert "\n" not in str(e.value)


def test_a_learning_rate_refused_by_a_custom_factory_is_named():
    from unroll import MatrixOperator
    from unroll.models import ALISTA

    import functools

    op = MatrixOperator(torch.randn(5, 10) / 5 ** 0.5)
    task = ReconstructionTask(ALISTA(2, operator=op), operator=op, optimizer=lambda p: torch.optim.SGD(p, lr=-1.0))
    with pytest.raises(ValueError, match=r"optimizer\.init_args\.lr: .*Invalid learning rate: -1\.0"):
        task.configure_optimizers()
    task = ReconstructionTask(ALISTA(2, operator=op), operator=op,
                              optimizer=functools.partial(torch.optim.SGD, lr=float("nan")))
    with pytest.raises(ValueError, match=r"optimizer\.init_args\.lr: .*torch\.optim\.sgd\.SGD, got nan"):
        task.configure_optimizers()
    ok = ReconstructionTask(ALISTA(2, operator=op), operator=op, optimizer=lambda p: torch.optim.SGD(p, lr=0.5))
    assert ok.configure_optimizers().param_groups[0]["lr"] == 0.5


# ---------------------------------------------------------------- lista_family --reuse
@pytest.fixture(scope="module")
def lista_family():
    spec = importlib.util.spec_from_file_location("lista_family_bench", ROOT / "benchmarks" / "lista_family.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_reuse_refusal_decides_on_code_config_budget_and_overrides(lista_family):
    refuse = lista_family.reuse_refusal
    run = {"commit": "abc", "code": "c1", "config_sha256": "h1", "budget": "00:00:08:00", "args": ["--a=1"]}
    assert refuse(dict(run, wall_s=3.0), run) is None
    for key, other, word in (("code", "c2", "code"), ("config_sha256", "h2", "resolved config"),
                             ("budget", "00:00:09:00", "budget"), ("args", ["--a=2"], "overrides")):
        why = refuse(run, dict(run, **{key: other}))
        assert why is not None and word in why and str(other) in why
    assert "no run.json" in refuse(None, run)
    old = {"wall_s": 1.0, "budget": "00:00:08:00", "args": ["--a=1"]}  # a run.json from before
    assert "records no code" in refuse(old, run)
    assert "unknown" in refuse(run, dict(run, code=None))
    assert refuse(dict(run, commit="other"), run) is None  # a commit that leaves the code alone


def test_train_reuses_only_a_matching_run(lista_family, tmp_path, monkeypatch):
    """train() with --reuse: a matching run.json returns the checkpoint untouched; a different
    config hash retrains (the fit command is recorded, not run) and records the new identity."""
    lf = lista_family
    monkeypatch.setattr(lf, "code_version", lambda: {"commit": "abc", "code": "c1"})
    monkeypatch.setattr(lf, "config_sha256", lambda cmd: "h1")
    run_dir = tmp_path / "noiseless" / "alista"
    ckpt = run_dir / "runs" / "alista" / "version_0" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"old")
    (run_dir / "run.json").write_text(json.dumps({"wall_s": 5.0, "commit": "abc", "code": "c1",
                                                  "config_sha256": "h1", "budget": "00:00:08:00 CPU", "args": []}))
    out = lf.train(tmp_path, "noiseless", "ALISTA", "00:00:08:00", True, [])
    assert out["reused"] and out["wall_s"] == 5.0 and ckpt.read_bytes() == b"old"

    ran = []

    def fake_run(cmd, cwd=None, **kwargs):
        ran.append(cmd)
        target = Path(cwd) / "runs" / "alista" / "version_0" / "checkpoints" / "last.ckpt"
        target.parent.mkdir(parents=True)
        target.write_bytes(b"new")
        return subprocess.CompletedProcess(cmd, 0)
    monkeypatch.setattr(lf.subprocess, "run", fake_run)
    monkeypatch.setattr(lf, "_train_seconds", lambda ckpt: 7.0)
    monkeypatch.setattr(lf, "config_sha256", lambda cmd: "h2")  # e.g. an edited config
    out = lf.train(tmp_path, "noiseless", "ALISTA", "00:00:08:00", True, [])
    assert not out["reused"] and ran and ckpt.read_bytes() == b"new"
    saved = json.loads((run_dir / "run.json").read_text())
    assert saved["config_sha256"] == "h2" and saved["code"] == "c1" and saved["commit"] == "abc"
    assert saved["budget"] == "00:00:08:00 CPU" and saved["cpu_s"] == 7.0 and saved["segments"] == 1
    assert not (run_dir / "partial.json").exists()
    # the budget is CPU time, and the timer is appended after the overrides that address StageWise
    cmd = ran[-1]
    assert cmd[-2:] == ["--trainer.callbacks+=unroll.train.CPUTimer", "--trainer.callbacks.init_args.duration=00:00:08:00"]
    assert not any(a.startswith("--trainer.max_time") for a in cmd)


def test_train_resumes_an_interrupted_matching_run(lista_family, tmp_path, monkeypatch):
    """--reuse on a run that was killed (partial.json, no run.json): the same identity resumes
    from last.ckpt in the same folder and counts both segments; another identity starts over."""
    lf = lista_family
    monkeypatch.setattr(lf, "code_version", lambda: {"commit": "abc", "code": "c1"})
    monkeypatch.setattr(lf, "config_sha256", lambda cmd: "h1")
    monkeypatch.setattr(lf, "_train_seconds", lambda ckpt: 9.0)
    run_dir = tmp_path / "snr40" / "lista_cp"
    ckpt = run_dir / "runs" / "lista_cp" / "version_0" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"half")
    identity = {"commit": "abc", "code": "c1", "config_sha256": "h1", "budget": "00:00:08:00 CPU", "args": []}
    start = ckpt.stat().st_mtime - 100.0
    (run_dir / "partial.json").write_text(json.dumps({**identity, "segments": [[start, None]]}))
    ran = []

    def fake_run(cmd, cwd=None, **kwargs):
        ran.append(cmd)
        assert (Path(cwd) / "runs" / "lista_cp" / "version_0" / "checkpoints" / "last.ckpt").read_bytes() == b"half"
        return subprocess.CompletedProcess(cmd, 0)
    monkeypatch.setattr(lf.subprocess, "run", fake_run)
    out = lf.train(tmp_path, "snr40", "LISTA-CP", "00:00:08:00", True, [])
    assert ran[-1][-2:] == ["--ckpt_path", "last"] and not out["reused"]
    assert out["segments"] == 2 and out["wall_s"] >= 100.0 and out["cpu_s"] == 9.0
    assert not (run_dir / "partial.json").exists() and (run_dir / "run.json").is_file()

    # an interrupted run of another config is not resumed
    (run_dir / "run.json").unlink()
    (run_dir / "partial.json").write_text(json.dumps({**identity, "config_sha256": "old", "segments": [[start, None]]}))

    def fresh_run(cmd, cwd=None, **kwargs):
        ran.append(cmd)
        assert not (Path(cwd) / "runs").exists()  # the old folder was cleared
        target = Path(cwd) / "runs" / "lista_cp" / "version_0" / "checkpoints" / "last.ckpt"
        target.parent.mkdir(parents=True)
        target.write_bytes(b"new")
        return subprocess.CompletedProcess(cmd, 0)
    monkeypatch.setattr(lf.subprocess, "run", fresh_run)
    out = lf.train(tmp_path, "snr40", "LISTA-CP", "00:00:08:00", True, [])
    assert "--ckpt_path" not in ran[-1] and out["segments"] == 1 and ckpt.read_bytes() == b"new"
