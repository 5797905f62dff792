"""``UnrollCLI``: LightningCLI with the project's defaults, shared by ``unroll fit/...`` (``cli.py``)
and ``unroll evaluate`` (``evaluate.py``); its own module so that neither imports the other.

What it adds to LightningCLI (see ``cli.py`` for the command): one folder per run (claimed
atomically under the logger's folder, ``--run_name``, ``--ckpt_path last``), the CLI's progress
bar and end-of-run summary, atomic and verified checkpoint IO by default, a ``--ckpt_path``
checked before Lightning reads it, and the task's config saved into its checkpoints.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import lightning as L
import yaml
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningCLI

from .callbacks import PredictionWriter, ReportPaths, RunProgressBar, fit_summary
from .fastmri_predictions import FastMRIPredictionWriter

__all__ = ["UnrollCLI"]

_FILE_LOGGERS = ("CSVLogger", "TensorBoardLogger")
_PREDICTION_WRITERS = {"fastmri": FastMRIPredictionWriter}  # data module's prediction_layout -> writer
_RUN_ENV = "_UNROLL_RUN_DIR"  # the run folder rank 0 chose, for the processes DDP starts


class UnrollCLI(LightningCLI):
    """LightningCLI with the project's defaults (subclass mode for model and data, config saved
    next to the logs), one folder per run, the CLI's progress bar and an end-of-run summary."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("parser_kwargs", {}).setdefault(
            "description", "unroll: train and evaluate unrolled solvers (LightningCLI). Subcommands: fit, validate, "
                           "test, predict and evaluate (unroll evaluate --help).")
        super().__init__(L.LightningModule, L.LightningDataModule, *args, **kwargs)

    def parse_arguments(self, parser, args) -> None:
        # `unroll evaluate` and the tests pass args while sys.argv holds the command line: intended
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*args parameter is intended.*")
            super().parse_arguments(parser, args)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--run_name", type=Optional[str], default=None,
                            help="fit: the run's folder name under the logger's folder (default: the next "
                                 "version_N); an existing name is refused unless resumed with --ckpt_path")

    # ------------------------------------------------------------------ run folders
    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        if self.subcommand is None or "trainer" not in cfg:
            return
        trainer = cfg["trainer"]
        _check_precision(trainer.get("precision"))
        logger = trainer.get("logger")
        file_logger = _is_file_logger(logger)
        if file_logger:
            init = logger["init_args"]
            root_dir = trainer.get("default_root_dir")
            if root_dir is not None and not os.path.isabs(str(init["save_dir"])):
                init["save_dir"] = os.path.join(str(root_dir), str(init["save_dir"]))
        if self.subcommand != "fit":
            # validate/test/predict write no run folder of their own (which `--ckpt_path last` of a
            # later fit would take for the newest run): results are printed, predictions written
            if cfg.get("ckpt_path") == "last" and file_logger:
                cfg["ckpt_path"] = str(_newest_run_checkpoint(_runs_root(logger)))
            trainer["logger"] = False
            self.save_config_callback = None
            return
        if not file_logger or logger["init_args"].get("version") is not None:
            return
        root = _runs_root(logger)
        run = self._choose_run(root, cfg)
        logger["init_args"]["version"] = run.name

    def _choose_run(self, root: Path, cfg) -> Path:
        inherited = os.environ.get(_RUN_ENV)
        if inherited and os.environ.get("LOCAL_RANK", "0") != "0":  # a DDP process started by rank 0
            return Path(inherited)
        ckpt = cfg.get("ckpt_path")
        run_name = cfg.get("run_name")
        run: Optional[Path] = None
        if ckpt == "last":
            path = _newest_run_checkpoint(root)
            cfg["ckpt_path"] = str(path)
            run = path.parent.parent
        elif ckpt and Path(ckpt).resolve().parent.name == "checkpoints" \
                and Path(ckpt).resolve().parent.parent.parent == root.resolve():
            run = Path(ckpt).resolve().parent.parent  # a checkpoint of a run of this config: continue that run
        if run is not None:
            # resumed in its own folder: its checkpoints and logs are expected there
            warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty.*")
            if run_name is not None and run.name != run_name:
                raise ValueError(f"run_name: {run_name!r}, but --ckpt_path resumes the run {str(run)!r}")
            _keep_metrics(run)
        elif run_name is not None:
            run = root / run_name
            try:
                run.mkdir(parents=True)
            except FileExistsError:
                raise ValueError(f"run_name: a run {str(run)!r} exists already; choose another name, or resume it "
                                 f"with --ckpt_path {run / 'checkpoints' / 'last.ckpt'}") from None
        else:
            run = _claim_version(root)
        os.environ[_RUN_ENV] = str(run)
        return run

    # ------------------------------------------------------------------ trainer
    def instantiate_trainer(self, **kwargs):
        # checkpoints are written atomically and loaded safely (unroll.train.AtomicCheckpointIO)
        # unless the trainer is given another CheckpointIO
        from .checkpoint import default_checkpoint_plugins

        given = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        kwargs["plugins"] = default_checkpoint_plugins(given.get("plugins"), given.get("strategy"))
        return super().instantiate_trainer(**kwargs)

    def _parse_ckpt_path(self) -> None:
        # `fit --ckpt_path X`: Lightning reads X's hyper-parameters here, before any plugin exists;
        # check the file first, so a damaged or hostile one is refused with one line
        from .checkpoint import load_checkpoint

        sub = self.config.get("subcommand")
        path = self.config[sub].get("ckpt_path") if sub else None
        if path and os.path.isfile(path):
            load_checkpoint(path, map_location="cpu")
        super()._parse_ckpt_path()

    def _instantiate_trainer(self, config: Dict[str, Any], callbacks: List[Any]) -> L.Trainer:
        listed = config.get("callbacks") or []
        listed = listed if isinstance(listed, list) else [listed]
        listed = [c for c in listed if not isinstance(c, ReportPaths)]  # the CLI prints the summary
        if self.subcommand in ("validate", "test", "predict"):  # they write no checkpoints
            listed = [c for c in listed if not isinstance(c, ModelCheckpoint)]
        if config.get("enable_progress_bar") is False:
            listed = [c for c in listed if not isinstance(c, ProgressBar)]
        elif not any(isinstance(c, ProgressBar) for c in [*listed, *callbacks]):
            callbacks = [*callbacks, RunProgressBar()]
        if self.subcommand == "predict" and not any(isinstance(c, BasePredictionWriter) for c in [*listed, *callbacks]):
            out = _default_predictions_dir(self.config["predict"].get("ckpt_path"))
            # a data module may ask for its own layout (FastMRIDataModule: "fastmri", one file per volume)
            layout = getattr(self.datamodule, "prediction_layout", None)
            callbacks = [*callbacks, _PREDICTION_WRITERS.get(layout, PredictionWriter)(out)]
        config["callbacks"] = listed
        return super()._instantiate_trainer(config, callbacks)

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        # Give the task the model and data sections of its config, so that checkpoints carry
        # them and ``unroll evaluate CKPT...`` can rebuild each model without its YAML.
        if hasattr(self.model, "cli_config"):
            cfg = self.config[self.subcommand] if self.subcommand else self.config
            dumped = yaml.safe_load(self._parser(self.subcommand).dump(cfg, skip_validation=True))
            self.model.cli_config = {k: dumped[k] for k in ("model", "data") if k in dumped}

    def before_fit(self) -> None:
        if self.trainer.is_global_zero and self.trainer.logger is not None and self.trainer.log_dir:
            ckpt = self.config["fit"].get("ckpt_path")
            print(f"run folder: {self.trainer.log_dir}" + (f" (resuming {ckpt})" if ckpt else ""), flush=True)

    def after_fit(self) -> None:
        if self.trainer.is_global_zero:
            print("\n".join(fit_summary(self.trainer)), flush=True)


def _check_precision(precision: Any) -> None:
    """16-bit precision is refused: it breaks the maths of the solvers these models unroll."""
    if precision is not None and str(precision).split("-")[0] in ("16", "bf16"):
        raise ValueError(
            f"trainer.precision: {precision} is not supported: float16/bfloat16 round every matrix product and "
            "threshold to 11/8 significant bits, a relative error (1e-3 to 4e-3) far above the errors these models "
            "reach (ALISTA: -64 dB NMSE), and some layers fail on mixed dtypes; use 32-true (the default) or 64-true")


def _is_file_logger(logger: Any) -> bool:
    """A config's logger section that writes into ``save_dir/name/version`` (CSV, TensorBoard)."""
    try:
        class_path = str(logger["class_path"])
        init = logger["init_args"]
    except (KeyError, TypeError, IndexError):
        return False
    return class_path.rsplit(".", 1)[-1] in _FILE_LOGGERS and init is not None and init.get("save_dir") is not None


def _runs_root(logger: Any) -> Path:
    init = logger["init_args"]
    name = init.get("name")
    return Path(str(init["save_dir"])) / (str(name) if name else "")


def _claim_version(root: Path) -> Path:
    """Create and return the next free ``root/version_N`` (mkdir is atomic: two runs started at
    once get different folders)."""
    root.mkdir(parents=True, exist_ok=True)
    taken = [int(m.group(1)) for p in root.iterdir() if (m := re.fullmatch(r"version_(\d+)", p.name))]
    n = max(taken, default=-1) + 1
    while True:
        try:
            (root / f"version_{n}").mkdir()
            return root / f"version_{n}"
        except FileExistsError:
            n += 1


def _default_predictions_dir(ckpt_path: Optional[str]) -> str:
    """Where ``unroll predict`` writes without a writer in the config: the checkpoint's run folder
    (``<run>/predictions/``) for a checkpoint of a run, else ``./predictions/``."""
    if ckpt_path and Path(ckpt_path).parent.name == "checkpoints":
        return str(Path(ckpt_path).parent.parent / "predictions")
    return "predictions"


def _started(run: Path) -> float:
    """When a run last started: the time its config was saved (at the start of each fit)."""
    config = run / "config.yaml"
    return (config if config.exists() else run).stat().st_mtime


def _newest_run_checkpoint(root: Path) -> Path:
    """``last.ckpt`` of the newest run (the last one started or resumed) under ``root`` that has
    one; runs started later without a checkpoint (stopped before their first validation, or
    failed at start) are named in a message."""
    runs = sorted((p for p in root.iterdir() if p.is_dir()), key=_started, reverse=True) if root.is_dir() else []
    with_ckpt = [p for p in runs if (p / "checkpoints" / "last.ckpt").is_file()]
    if not with_ckpt:
        raise FileNotFoundError(f"ckpt_path: 'last' resumes the newest run of this config, but no run under "
                                f"{str(root)!r} has a checkpoints/last.ckpt"
                                + (f" (runs: {', '.join(p.name for p in runs)})" if runs else ""))
    newer = runs[:runs.index(with_ckpt[0])]
    if newer:
        print(f"ckpt_path last: {', '.join(str(p) for p in newer)} started later but wrote no checkpoint; "
              f"resuming {with_ckpt[0]}", flush=True)
    return with_ckpt[0] / "checkpoints" / "last.ckpt"


def _keep_metrics(run: Path) -> None:
    """Before a run resumes in its folder: Lightning's CSV logger would delete its metrics.csv;
    keep it as metrics-N.csv."""
    metrics = run / "metrics.csv"
    if metrics.is_file():
        n = 0
        while (run / f"metrics-{n}.csv").exists():
            n += 1
        metrics.rename(run / f"metrics-{n}.csv")
