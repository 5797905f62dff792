"""The ``unroll`` CLI end to end, on tiny budgets: fit → evaluate, resume, predict, DDP, bad input."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unroll.train.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Configs write under ./runs: run every test in its own folder."""
    monkeypatch.chdir(tmp_path)


def tiny(tmp_path, m=20, n=40, layers=4, steps=30, seed=0, batches=10):
    """Overrides that shrink any config of configs/ to a seconds-long run under tmp_path (its runs
    go to tmp_path/runs/<config>/version_N)."""
    return [
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.max_time=null", f"--trainer.max_steps={steps}",
        "--data.init_args.problem=gaussian", f"--data.init_args.m={m}", f"--data.init_args.n={n}",
        f"--data.init_args.train_batches={batches}", "--data.init_args.val_size=64", "--data.init_args.test_size=64",
        f"--data.init_args.seed={seed}", f"--model.init_args.model.init_args.num_layers={layers}",
        "--trainer.val_check_interval=1.0",
    ]


def last_ckpt(tmp_path) -> Path:
    found = sorted(Path(tmp_path).rglob("last*.ckpt"), key=os.path.getmtime)
    assert found, f"no last.ckpt under {tmp_path}"
    return found[-1]


def test_fit_then_evaluate(tmp_path, capsys):
    cfg = str(CONFIGS / "alista.yaml")
    main(["fit", "--config", cfg, *tiny(tmp_path, steps=150), "--model.init_args.optimizer.init_args.lr=0.01"])
    ckpt = last_ckpt(tmp_path)
    out = capsys.readouterr().out
    assert "last checkpoint:" in out and str(ckpt.name) in out  # the run says where it saved

    eval_dir = tmp_path / "eval"
    eval_args = ["evaluate", "--config", cfg, *tiny(tmp_path), "--ckpt_path", str(ckpt),
                 "--output_dir", str(eval_dir)]
    main(eval_args)
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert set(metrics) == {"ALISTA", "ista", "fista"}
    for curve in metrics.values():
        assert len(curve["nmse_db"]) == 4 and all(math.isfinite(v) for v in curve["nmse_db"])
    # ISTA and FISTA coincide at the first iteration (same first step from x0 = 0)
    assert metrics["ista"]["nmse_db"][0] == pytest.approx(metrics["fista"]["nmse_db"][0], abs=1e-4)
    # 150 steps of training already beat ISTA at equal depth
    assert metrics["ALISTA"]["nmse_db"][-1] < metrics["ista"]["nmse_db"][-1]
    # and the untrained network (the same config, not fitted) on the same test signals: training did something
    from unroll.metrics import nmse
    from unroll.train.cli import UnrollCLI

    untrained = UnrollCLI(args=["--config", cfg, *tiny(tmp_path)], run=False)
    untrained.datamodule.setup("test")
    untrained.model.bind(untrained.datamodule.get_operator())
    y, x = untrained.datamodule.test_split.y, untrained.datamodule.test_split.x
    with torch.no_grad():
        untrained_db = float(nmse(untrained.model(y), x))
    assert metrics["ALISTA"]["nmse_db"][-1] < untrained_db - 1.0, (metrics["ALISTA"]["nmse_db"][-1], untrained_db)
    assert (eval_dir / "metrics.csv").read_text().splitlines()[0] == \
        "iteration,ALISTA_nmse_db,ista_nmse_db,fista_nmse_db"
    assert (eval_dir / "nmse.png").read_bytes()[:4] == b"\x89PNG"
    assert "iteration" in capsys.readouterr().out  # the table

    # the same checkpoint on another problem (another seed, hence another A) is refused
    other = [a if not a.startswith("--data.init_args.seed") else "--data.init_args.seed=1" for a in eval_args]
    with pytest.raises(ValueError, match="trained on another problem"):
        main(other)


def test_evaluate_several_checkpoints_in_one_table(tmp_path, capsys):
    """Each checkpoint carries the config that trained it: no --config needed, one table."""
    family = {"tilista": "TiLISTA", "lista_cpss": "LISTACPSS", "lista": "LISTA", "lista_ss": "LISTASS",
              "lista_cp": "LISTACP", "alista": "ALISTA", "learned_pgd": "LearnedPGD"}
    ckpts = []
    for name in family:
        run = tmp_path / name
        main(["fit", "--config", str(CONFIGS / f"{name}.yaml"), *tiny(run, steps=40 if name == "tilista" else 10)])
        ckpts.append(str(last_ckpt(run)))
    eval_dir = tmp_path / "eval"
    main(["evaluate", "--ckpt_path", *ckpts, "--output_dir", str(eval_dir)])
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert list(metrics) == [*family.values(), "ista", "fista"]  # every model of the family, one table
    assert all(len(v["nmse_db"]) == 4 and all(math.isfinite(x) for x in v["nmse_db"]) for v in metrics.values())
    ckpts = ckpts[:2]
    # each checkpoint's curve is its own test run: the same as evaluating it alone with its config
    alone = tmp_path / "alone"
    main(["evaluate", "--config", str(CONFIGS / "tilista.yaml"), *tiny(tmp_path / "tilista"), "--ckpt_path", ckpts[0],
          "--output_dir", str(alone)])
    np_alone = json.loads((alone / "metrics.json").read_text())["TiLISTA"]["nmse_db"]
    assert metrics["TiLISTA"]["nmse_db"] == pytest.approx(np_alone, abs=1e-6)
    assert "TiLISTA" in capsys.readouterr().out
    # per sample: the final NMSE of each test signal; ISTA's equals an independent computation
    from unroll import solvers
    from unroll.data import SparseRecoveryDataModule
    from unroll.metrics import nmse

    per = {k: v["per_sample_nmse_db"] for k, v in metrics.items()}
    assert all(len(v) == 64 for v in per.values())
    dm = SparseRecoveryDataModule(problem="gaussian", m=20, n=40, val_size=64, test_size=64, seed=0)
    dm.setup("test")
    x_ista, _ = solvers.ista(dm.get_operator(), dm.test_split.y, 0.1, max_iter=4, tol=None)
    assert per["ista"] == pytest.approx(nmse(x_ista, dm.test_split.x, reduction="none").tolist(), abs=1e-3,
                                         nan_ok=True)  # a signal that is all zero has no NMSE
    assert (eval_dir / "per_sample.csv").read_text().splitlines()[0] == \
        "sample," + ",".join(f"{k}_nmse_db" for k in [*family.values(), "ista", "fista"])
    # --data: the same checkpoints on other measurements of the same A (here: SNR 10 dB)
    noisy = tmp_path / "noisy"
    main(["evaluate", "--ckpt_path", *ckpts, "--data", "{init_args: {snr_db: 10}}", "--output_dir", str(noisy)])
    worse = json.loads((noisy / "metrics.json").read_text())
    assert worse["ista"]["nmse_db"][-1] != pytest.approx(metrics["ista"]["nmse_db"][-1], abs=1e-3)

    # names, and a checkpoint of other data cannot share the table
    main(["evaluate", "--ckpt_path", *ckpts, "--names", "a", "b", "--output_dir", str(eval_dir)])
    assert list(json.loads((eval_dir / "metrics.json").read_text()))[:2] == ["a", "b"]
    other = tmp_path / "other"
    main(["fit", "--config", str(CONFIGS / "tilista.yaml"), *tiny(other, steps=2, seed=1)])
    with pytest.raises(ValueError, match="other data"):
        main(["evaluate", "--ckpt_path", ckpts[0], str(last_ckpt(other)),
              "--output_dir", str(eval_dir)])
    with pytest.raises(ValueError, match="names"):
        main(["evaluate", "--ckpt_path", *ckpts, "--names", "a", "--output_dir", str(eval_dir)])


def test_resume_from_last_checkpoint(tmp_path):
    cfg = str(CONFIGS / "learned_ista.yaml")
    main(["fit", "--config", cfg, *tiny(tmp_path, steps=10)])
    ckpt = last_ckpt(tmp_path)
    assert torch.load(ckpt, weights_only=False)["global_step"] == 10
    main(["fit", "--config", cfg, *tiny(tmp_path, steps=20), "--ckpt_path", str(ckpt)])
    assert torch.load(last_ckpt(tmp_path), weights_only=False)["global_step"] == 20


def test_last_checkpoint_is_the_latest_state_even_without_improvement(tmp_path):
    """last.ckpt follows training (for resume and evaluation), not the last improvement of the
    monitored metric: with lr = 0 nothing improves after the first validation."""
    cfg = str(CONFIGS / "learned_ista.yaml")
    main(["fit", "--config", cfg, *tiny(tmp_path, steps=30), "--model.init_args.optimizer.init_args.lr=0.0"])
    assert torch.load(tmp_path / "runs" / "learned_ista" / "version_0" / "checkpoints" / "last.ckpt",
                      weights_only=False)["global_step"] == 30
    best = list((tmp_path / "runs" / "learned_ista" / "version_0" / "checkpoints").glob("best-*.ckpt"))
    assert len(best) == 1 and torch.load(best[0], weights_only=False)["global_step"] == 10


def test_predict_writes_atomically(tmp_path):
    cfg = str(CONFIGS / "learned_ista.yaml")
    main(["fit", "--config", cfg, *tiny(tmp_path, steps=5)])
    ckpt = last_ckpt(tmp_path)
    pred_dir = tmp_path / "pred"
    main(["predict", "--config", cfg, *tiny(tmp_path), "--ckpt_path", str(ckpt),
          "--trainer.callbacks+=unroll.train.PredictionWriter",
          f"--trainer.callbacks.output_dir={pred_dir}"])
    x_hat = torch.load(pred_dir / "predictions.pt")["x_hat"]
    assert x_hat.shape == (64, 40) and torch.isfinite(x_hat).all()
    assert not list(pred_dir.glob("*.tmp"))


def test_checkpoint_of_another_model_is_refused(tmp_path):
    main(["fit", "--config", str(CONFIGS / "learned_ista.yaml"), *tiny(tmp_path, steps=3)])
    ckpt = last_ckpt(tmp_path)
    with pytest.raises(ValueError, match="LearnedISTA.*ALISTA|holds a .*LearnedISTA"):
        main(["evaluate", "--config", str(CONFIGS / "alista.yaml"), *tiny(tmp_path), "--ckpt_path", str(ckpt),
              "--output_dir", str(tmp_path / "eval")])


def test_unknown_config_key_is_an_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    text = (CONFIGS / "alista.yaml").read_text().replace("num_layers: 16", "num_layer: 16")
    bad.write_text(text)
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(bad)])
    assert exc.value.code != 0
    assert "num_layer" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["alista", "lista", "learned_ista", "ista_unsupervised", "iht"])
def test_every_config_parses(name, tmp_path):
    """Each shipped config is valid as is (parsed and instantiated, no training)."""
    from unroll.train.cli import UnrollCLI

    cli = UnrollCLI(args=["--config", str(CONFIGS / f"{name}.yaml"), f"--trainer.default_root_dir={tmp_path}"],
                    run=False)
    assert cli.model.model.num_layers >= 16


@pytest.mark.parametrize("name", ["alista", "lista", "lista_ss", "lista_cp", "lista_cpss", "tilista"])
def test_stagewise_options_from_the_command_line(name, tmp_path):
    """The stage-wise configs list StageWise last, so `--trainer.callbacks.init_args.KEY=VALUE`
    sets its options (as their comment says) without repeating the callback list."""
    from unroll.train import StageWise
    from unroll.train.cli import UnrollCLI

    cli = UnrollCLI(args=["--config", str(CONFIGS / f"{name}.yaml"), f"--trainer.default_root_dir={tmp_path}",
                          "--trainer.callbacks.init_args.patience=80", "--trainer.callbacks.init_args.min_delta=0.01"],
                    run=False)
    (stagewise,) = [c for c in cli.trainer.callbacks if isinstance(c, StageWise)]
    assert stagewise.patience == 80 and stagewise.min_delta == 0.01


def test_ddp_two_processes(tmp_path):
    """`unroll fit --config configs/lista.yaml` with DDP on 2 CPU processes (gloo)."""
    cmd = [sys.executable, "-m", "unroll.train.cli", "fit", "--config", str(CONFIGS / "lista.yaml"),
           "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp",
           *tiny(tmp_path, steps=4)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world_size: 2" in proc.stderr + proc.stdout or "MEMBER: 2/2" in proc.stderr + proc.stdout
    ckpt = torch.load(last_ckpt(tmp_path), weights_only=False)
    assert ckpt["global_step"] == 4


def test_grad_mode_from_config(tmp_path):
    """The gradient mode is a typed model argument, so a config (or the command line) sets it."""
    cfg = str(CONFIGS / "learned_ista.yaml")
    main(["fit", "--config", cfg, *tiny(tmp_path, steps=4),
          "--model.init_args.model.init_args.grad_mode=checkpoint"])
    assert torch.load(last_ckpt(tmp_path), weights_only=False)["global_step"] == 4


from lightning.pytorch.callbacks import Callback  # noqa: E402  (kept next to its one use)


class DivergeAt(Callback):
    """From training step ``step`` on, every learned step size of the model is 1000/L (far above 2/L)."""

    def __init__(self, step: int = 15) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            from unroll.parametrize import PositiveScalar

            for name, m in pl_module.model.named_modules():
                if name.endswith(".step") and isinstance(m, PositiveScalar):
                    m.set_(1000.0)


def test_diverging_training_stops_without_nan_checkpoint(tmp_path):
    """Training that diverges after checkpoints were written (validation and checkpoints at step 10,
    step sizes 1000/L from step 15): it stops with a clear error at step 15; the checkpoints
    written before are finite, and none was written after the divergence."""
    cfg = str(CONFIGS / "learned_ista.yaml")
    with pytest.warns(UserWarning, match="diverged"), \
            pytest.raises(FloatingPointError, match="diverged") as err:
        main(["fit", "--config", cfg, *tiny(tmp_path, steps=50, layers=16),
              '--trainer.callbacks+={"class_path": "test_cli.DivergeAt", "init_args": {"step": 15}}'])
    assert "at step 15" in str(err.value)
    ckpts = list(Path(tmp_path).rglob("*.ckpt"))
    assert ckpts, "no checkpoint was written before the divergence"
    for ckpt in ckpts:
        saved = torch.load(ckpt, weights_only=False)
        assert saved["global_step"] < 15
        assert all(torch.isfinite(t).all() for t in saved["state_dict"].values())


def test_load_from_checkpoint_without_its_config(tmp_path, capsys):
    """``ReconstructionTask.load_from_checkpoint(path)`` rebuilds task, model and operator from a
    checkpoint of ``unroll fit`` alone, and gives the estimates ``unroll evaluate`` scored."""
    from unroll.data import SparseRecoveryDataModule
    from unroll.metrics import nmse
    from unroll.models import LISTACP
    from unroll.train import ReconstructionTask

    main(["fit", "--config", str(CONFIGS / "lista_cp.yaml"), *tiny(tmp_path, steps=20)])
    ckpt = last_ckpt(tmp_path / "runs" / "lista_cp")
    task = ReconstructionTask.load_from_checkpoint(ckpt)
    assert isinstance(task.model, LISTACP) and task.model.num_layers == 4 and task.scalar_lr_factor == 100
    state = torch.load(ckpt, weights_only=False)["state_dict"]
    assert task.state_dict().keys() == state.keys()
    assert all(torch.equal(task.state_dict()[k], v) for k, v in state.items())

    main(["evaluate", "--ckpt_path", str(ckpt), "--output_dir", str(tmp_path / "eval")])
    scored = json.loads((tmp_path / "eval" / "metrics.json").read_text())["LISTACP"]["nmse_db"][-1]
    dm = SparseRecoveryDataModule(problem="gaussian", m=20, n=40, val_size=64, test_size=64, seed=0)
    dm.setup("test")
    y, x = dm.test_split.y, dm.test_split.x
    with torch.no_grad():
        x_hat = task(y)
    assert float(nmse(x_hat, x)) == pytest.approx(scored, abs=1e-4)

    # overrides of the task's arguments, and the saved config travels on
    assert ReconstructionTask.load_from_checkpoint(ckpt, weighting="uniform").weighting == "uniform"
    assert task.cli_config["model"]["init_args"]["model"]["class_path"] == "unroll.models.LISTACP"


def test_load_from_checkpoint_of_a_task_trained_from_python(tmp_path):
    """No saved config: the architecture comes from ``model=``; a wrong one is refused."""
    import lightning as L

    from unroll.data import SparseRecoveryDataModule
    from unroll.models import ALISTA, LISTACP
    from unroll.train import ReconstructionTask

    dm = SparseRecoveryDataModule(problem="gaussian", m=20, n=40, train_batches=5, val_size=32, test_size=32)
    task = ReconstructionTask(LISTACP(num_layers=3, init="analytic"), scalar_lr_factor=10.0)
    trainer = L.Trainer(max_steps=5, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(task, datamodule=dm)
    path = tmp_path / "python.ckpt"
    trainer.save_checkpoint(path)

    with pytest.raises(ValueError, match="no config.*model="):
        ReconstructionTask.load_from_checkpoint(path)
    loaded = ReconstructionTask.load_from_checkpoint(path, model=LISTACP(num_layers=3, init="analytic"))
    assert loaded.scalar_lr_factor == 10.0
    y = dm.test_split.y
    with torch.no_grad():
        torch.testing.assert_close(loaded(y), task(y), rtol=0, atol=0)
    with pytest.raises(ValueError, match="holds a .*LISTACP"):
        ReconstructionTask.load_from_checkpoint(path, model=ALISTA(num_layers=3))
    with pytest.raises(ValueError, match="3 layers"):
        ReconstructionTask.load_from_checkpoint(path, model=LISTACP(num_layers=4))


# ---------------------------------------------------------------------- usability (issue 13)
# configs/mri_*.yaml (classical MRI baselines, tests/test_modl.py) and pnp_admm_deblur.yaml
# (plug-and-play with fixed priors, tests/test_pnp.py) have nothing to train: they are scored by
# `unroll test`; configs/bilevel_*.yaml train a BilevelTask on tabular data with manual optimisation
# (tests/test_bilevel_task.py runs each of them); every other config must train here
TEST_ONLY = {"pnp_admm_deblur"}
ALL_CONFIGS = sorted(p.stem for p in CONFIGS.glob("*.yaml")
                     if not p.stem.startswith(("mri_", "bilevel_")) and p.stem not in TEST_ONLY)


def _files(folder: Path):
    """{relative path: (size, mtime_ns, bytes)} of every file under folder."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def tiny_any(name: str, root: Path, cache: Path, steps: int = 2):
    """Overrides that shrink config ``name`` of configs/ to a seconds-long run under ``root``: the
    sparse-recovery ones by :func:`tiny`, the others by the entry of their data module in
    ``TINY_EXTRA`` (a config on a new data module needs one, or this fails and says so)."""
    import yaml

    cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    data = str(cfg["data"]["class_path"]).rsplit(".", 1)[-1]
    if data == "SparseRecoveryDataModule":
        return tiny(root, steps=steps, layers=2, batches=2)
    assert data in TINY_EXTRA, f"configs/{name}.yaml: add tiny overrides for {data} to TINY_EXTRA in tests/test_cli.py"
    return [f"--trainer.default_root_dir={root}", "--trainer.max_time=null", f"--trainer.max_steps={steps}",
            *TINY_EXTRA[data](cfg, cache)]


def _tiny_mri(cfg, cache):
    """One built-in volume per split (FastMRIDataModule, issue 17); MoDL made small (the other
    MRI models are small already)."""
    model = cfg["model"]["init_args"]["model"]
    small = {"num_layers": 1, "features": 8} if model["class_path"] == "unroll.models.MoDL" else {}
    return ["--trainer.val_check_interval=2", "--trainer.limit_val_batches=1",
            "--data.init_args.builtin_split={train: [0], val: [3], test: [1]}",
            *[f"--model.init_args.model.init_args.{k}={v}" for k, v in small.items()]]


TINY_EXTRA = {
    "PoissonDataModule": lambda cfg, cache: [
        "--data.init_args.grid=[12,12]", "--data.init_args.lanczos_vectors=40",
        f"--data.init_args.cache={cache / 'poisson.h5'}", "--data.init_args.val_systems=2",
        "--model.init_args.model.init_args.dim=2", "--trainer.val_check_interval=1"],
    "FastMRIDataModule": _tiny_mri,
    "PatchDenoisingDataModule": lambda cfg, cache: [
        "--data.init_args.val_size=2", "--data.init_args.test_size=2", "--data.init_args.batch_size=2",
        "--trainer.val_check_interval=1",
        *(["--model.init_args.model.init_args.hidden=4"] if "LPN" in cfg["model"]["init_args"]["model"]["class_path"]
          else ["--data.init_args.patch_size=16"])],
    "LaplaceDenoisingDataModule": lambda cfg, cache: [
        "--data.init_args.val_size=16", "--data.init_args.test_size=16", "--data.init_args.batch_size=8",
        "--trainer.val_check_interval=1"],
    "DeblurringDataModule": lambda cfg, cache: [
        "--data.init_args.image_size=32", "--data.init_args.batch_size=2", "--data.init_args.val_size=2",
        "--trainer.val_check_interval=1"],
    # adversarial training on digits (issue 19): the fine-tuning config starts from scratch here
    # (tests/test_adversarial.py runs it from a standard run's checkpoint)
    "DigitsDataModule": lambda cfg, cache: [
        "--trainer.val_check_interval=1", "--trainer.limit_val_batches=1", "--model.init_args.eval_steps=2",
        *(["--model.init_args.pretrained=null"] if cfg["model"]["init_args"].get("pretrained") else [])],
}


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_every_config_runs_without_bar_in_root_dir_twice(name, tmp_path, capsys):
    """Every config: `--trainer.enable_progress_bar=false` works (the bar is the CLI's, not the
    config's), checkpoints land under `--trainer.default_root_dir`, and a second run of the same
    config gets its own folder and leaves the first run's files as they were."""
    root = tmp_path / "root"
    args = ["fit", "--config", str(CONFIGS / f"{name}.yaml"), *tiny_any(name, root, tmp_path),
            "--trainer.enable_progress_bar=false"]
    main(args)
    first = root / "runs" / name / "version_0"
    assert (first / "checkpoints" / "last.ckpt").is_file()
    assert f"run folder: {first}" in capsys.readouterr().out  # said when training starts
    assert not (tmp_path / "runs").exists()  # nothing in the working folder
    before = _files(first)
    main(args)
    second = root / "runs" / name / "version_1"
    assert (second / "checkpoints" / "last.ckpt").is_file()
    assert _files(first) == before
    # last + best only (best where the config monitors a metric: the LPN toy keeps only its last
    # state, since its loss changes through the schedule and no validation metric ranks its MAP goal)
    monitored = "monitor:" in (CONFIGS / f"{name}.yaml").read_text()
    assert sorted(p.name.split("-")[0] for p in (second / "checkpoints").iterdir()) == \
        ["best", "last.ckpt"][0 if monitored else 1:]


class _KillAt(__import__("lightning").Callback):
    """Stands for `kill`: stops the process (an exception out of fit) at a given step."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            raise SystemError(f"killed at step {trainer.global_step}")


def test_resume_last_continues_the_killed_second_run(tmp_path, capsys):
    """Two runs of one config in one folder; the second is killed; the README's resume command
    (`--ckpt_path last`) resumes that second run in its own folder: the first run's checkpoints
    are neither reported nor deleted nor changed (issue 20, shared folders)."""
    from unroll.train.cli import UnrollCLI

    cfg = str(CONFIGS / "learned_ista.yaml")
    base = ["fit", "--config", cfg, *tiny(tmp_path, steps=8, batches=2),
            "--trainer.enable_progress_bar=false"]
    main(base + ["--model.init_args.optimizer.init_args.lr=0.0"])  # first run: its best is its first validation
    first = tmp_path / "runs" / "learned_ista" / "version_0"
    before = _files(first)
    with pytest.raises(SystemError, match="killed at step 5"):
        UnrollCLI(args=base, trainer_defaults={"callbacks": [_KillAt(5)]})
    second = tmp_path / "runs" / "learned_ista" / "version_1"
    assert torch.load(second / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4
    capsys.readouterr()

    main(base + ["--ckpt_path", "last"])
    out = capsys.readouterr().out
    assert f"run folder: {second}" in out and "resuming" in out
    assert torch.load(second / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 8
    assert not (tmp_path / "runs" / "learned_ista" / "version_2").exists()
    assert _files(first) == before
    assert str(first) not in out  # the summary names only the resumed run's checkpoints
    assert len(list((second / "checkpoints").glob("best-*.ckpt"))) == 1
    assert (second / "metrics-0.csv").is_file()  # the killed part's metrics are kept

    # a named run; its name cannot be taken twice
    main(base + ["--run_name", "snr40"])
    assert (tmp_path / "runs" / "learned_ista" / "snr40" / "checkpoints" / "last.ckpt").is_file()
    with pytest.raises(ValueError, match="run_name: a run .*snr40.* exists"):
        main(base + ["--run_name", "snr40"])


def test_no_run_to_resume_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run under"):
        main(["fit", "--config", str(CONFIGS / "learned_ista.yaml"), *tiny(tmp_path, steps=2), "--ckpt_path", "last"])


def test_stagewise_schedule_does_not_depend_on_machine_speed(tmp_path):
    """The main-job config's schedule is in steps and validations: the same run on a machine
    slowed down (a sleep in every step) gives the same model, to the bit, and ends by itself."""
    import time

    import lightning as L

    from unroll.train.cli import UnrollCLI

    class Slow(L.Callback):
        def on_train_batch_end(self, *args) -> None:
            time.sleep(0.02)

    def run(folder, callbacks):
        args = ["fit", "--config", str(CONFIGS / "alista.yaml"), *tiny(folder, steps=-1, layers=2, batches=4),
                "--trainer.val_check_interval=2", "--trainer.enable_progress_bar=false"]
        cli = UnrollCLI(args=args, trainer_defaults={"callbacks": callbacks})
        (sw,) = [c for c in cli.trainer.callbacks if type(c).__name__ == "StageWise"]
        return cli.trainer, sw, {k: v.clone() for k, v in cli.model.state_dict().items()}

    trainer_a, sw_a, state_a = run(tmp_path / "a", [])
    trainer_b, sw_b, state_b = run(tmp_path / "b", [Slow()])
    assert sw_a.done and sw_b.done  # the schedule ended the run (2 layers x 3 stages x <= 2 validations)
    assert trainer_a.global_step == trainer_b.global_step <= 2 * 3 * 2 * 2
    assert sw_a.history == sw_b.history
    assert state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_help_lists_every_subcommand(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    for sub in ("fit", "validate", "test", "predict", "evaluate"):
        assert f"\n  {sub} " in out
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    assert "--config CONFIG" in capsys.readouterr().out


def test_console_errors_are_one_line(tmp_path, monkeypatch, capsys):
    """From the console an argument error prints its message, not two chained tracebacks;
    --debug gives the traceback (the exception itself)."""
    monkeypatch.setattr(sys, "argv", ["unroll", "fit", "--config", str(CONFIGS / "alista.yaml"), *tiny(tmp_path),
                                      "--data.init_args.p=2"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "unroll: error: p: expected a support probability in (0, 1], got 2.0" in err
    assert "Traceback" not in err
    monkeypatch.setattr(sys, "argv", ["unroll", "evaluate", "--ckpt_path", "missing.ckpt", "--output_dir", "x"])
    with pytest.raises(SystemExit):
        main()
    assert "unroll: error: ckpt_path: no checkpoint at 'missing.ckpt'" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", [*sys.argv, "--debug"])
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        main()


def test_16_bit_precision_is_refused_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match="trainer.precision: bf16-mixed is not supported.*significant bits"):
        main(["fit", "--config", str(CONFIGS / "alista.yaml"), *tiny(tmp_path), "--trainer.precision=bf16-mixed"])


def test_predict_writes_to_a_default_file_and_says_where(tmp_path, capsys):
    cfg = str(CONFIGS / "learned_ista.yaml")
    main(["fit", "--config", cfg, *tiny(tmp_path, steps=2, batches=2), "--trainer.enable_progress_bar=false"])
    ckpt = last_ckpt(tmp_path)
    capsys.readouterr()
    main(["predict", "--config", cfg, *tiny(tmp_path), "--ckpt_path", str(ckpt)])
    path = ckpt.parent.parent / "predictions" / "predictions.pt"
    assert f"predictions: {path}" in capsys.readouterr().out
    assert torch.load(path)["x_hat"].shape == (64, 40)
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # like any new file, not owner-only
    assert sorted(p.name for p in (tmp_path / "runs" / "learned_ista").iterdir()) == ["version_0"]  # no new run


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_progress_bar_shows_the_budget_and_the_summary_comes_last(tmp_path, capsys):
    from unroll.train.callbacks import RunProgressBar
    from unroll.train.cli import UnrollCLI

    cli = UnrollCLI(args=["fit", "--config", str(CONFIGS / "alista.yaml"),
                          *tiny(tmp_path, steps=-1, layers=2, batches=4), "--trainer.val_check_interval=2"])
    (bar,) = [c for c in cli.trainer.callbacks if isinstance(c, RunProgressBar)]
    # the bar's budget is the schedule's: 2 layers x 3 stages x 2 validations x 2 steps, which it ran
    assert bar._total(cli.trainer) == cli.trainer.global_step == 24
    lines = [line for line in capsys.readouterr().out.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("logs and config:") and any(line.startswith("last checkpoint:") for line in lines[-3:])
    assert not any("v_num" in line or "Epoch" in line for line in lines)


def test_a_clone_named_unroll_in_the_working_folder_does_not_shadow_the_package(tmp_path):
    """`python script.py` in the folder that contains the clone (named unroll/) imports the
    installed package, not the clone as an empty namespace package."""
    (tmp_path / "unroll").symlink_to(ROOT, target_is_directory=True)
    (tmp_path / "script.py").write_text("import unroll, unroll.models\nfrom unroll import L1\nprint(unroll.__file__)\n")
    proc = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    core = Path(proc.stdout.strip()).parent
    assert (core / "unrolled.py").is_file() and (core / "__init__.py").is_file()  # the core package, not the clone's root
    # without an installed package: a message that says what to do
    proc = subprocess.run([sys.executable, "-S", "-c", "import unroll"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0 and "is a clone of the repository" in proc.stderr and "pip install" in proc.stderr


def test_output_leaves_out_what_the_user_cannot_act_on(tmp_path):
    """No cloud-logging tip, no 'GPU available: False' lines, no _pytree deprecation warning on
    fit; no args+sys.argv warning and no 'No seed found' on `evaluate --config`. Lightning's
    other messages still come through."""
    import logging
    import warnings

    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Keep()
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    for log in loggers:
        log.addHandler(handler)
    cfg = str(CONFIGS / "learned_ista.yaml")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            main(["fit", "--config", cfg, *tiny(tmp_path, steps=2, batches=2, layers=2),
                  "--trainer.enable_progress_bar=false"])
            main(["evaluate", "--config", cfg, *tiny(tmp_path, layers=2), "--ckpt_path", str(last_ckpt(tmp_path)),
                  "--output_dir", str(tmp_path / "eval")])
    finally:
        for log in loggers:
            log.removeHandler(handler)
    messages = records + [str(w.message) for w in caught]
    assert any("Trainer.fit` stopped" in m for m in messages)  # the rest is still said
    for noise in ("Tip:", "GPU available: False", "TPU available: False", "LeafSpec", "args parameter is intended",
                  "No seed found"):
        assert not [m for m in messages if noise in m], noise

# blind gain calibration (issue 19): its config runs in the every-config test on tiny instances
TINY_EXTRA["BlindCalibrationDataModule"] = lambda cfg, cache: [
    "--data.init_args.n=4", "--data.init_args.m=8", "--data.init_args.p=2", "--data.init_args.batch_size=4",
    "--data.init_args.val_size=8", "--data.init_args.test_size=8", "--data.init_args.train_batches=2",
    "--model.init_args.model.init_args.num_layers=2", "--trainer.val_check_interval=1"]
