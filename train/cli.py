"""The ``unroll`` command: LightningCLI's ``fit``/``validate``/``test``/``predict`` plus ``evaluate``.

    unroll fit --config configs/alista.yaml
    unroll fit --config configs/alista.yaml --ckpt_path last          # resume the newest run of the config
    unroll evaluate --ckpt_path runs/alista/version_0/checkpoints/last.ckpt --output_dir eval/

Configs name the task and the data module by class path (subclass mode), so any
``LightningModule``/``LightningDataModule`` of the project (or the user's) can be trained.
Unknown keys in a config are errors (jsonargparse), not silently ignored.

What the CLI adds to LightningCLI:

- **One folder per run.** ``fit`` claims a new folder ``<save_dir>/<name>/version_N`` of the
  config's logger (or ``<save_dir>/<name>/<run_name>`` with ``--run_name``), atomically, so two
  runs of one config never share it, even when started together; checkpoints (``last.ckpt`` and
  the best) and logs go there, and the folder is printed when training starts. A relative
  logger ``save_dir`` is taken under ``--trainer.default_root_dir`` when that is given.
  ``--ckpt_path last`` resumes the newest run of the config, in its own folder; so does
  ``--ckpt_path`` naming a checkpoint inside a run folder.
- **The progress bar** (:class:`~unroll.train.callbacks.RunProgressBar`) is the CLI's, not the
  configs': ``--trainer.enable_progress_bar=false`` works with every config.
- **A summary** (steps, schedule, best and last checkpoints, run folder) after the bar stops.
- **Quiet output**: Lightning's tips, the GPU/TPU lines on a machine without either and a
  deprecation warning from Lightning's internals are left out.
- **Errors** in the arguments print one line (``unroll: error: ...``); ``--debug`` (or
  ``UNROLL_DEBUG=1``) shows the traceback.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from typing import List, Optional

from .evaluate import evaluate_main
from .unroll_cli import UnrollCLI

__all__ = ["UnrollCLI", "main"]


# ---------------------------------------------------------------------- quiet output
class _Quiet(logging.Filter):
    """Drop Lightning lines the user cannot act on; say each of the others once per process."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set = set()

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if msg.startswith("💡 Tip") or re.match(r"(GPU available: False|TPU available: False|HPU available: False)",
                                               msg):
            return False
        if re.match(r"(GPU|TPU|HPU) available", msg):
            if msg in self.seen:
                return False
            self.seen.add(msg)
        return True


_QUIET = _Quiet()
_NOISE = [  # (message regex, reason)
    (r".*isinstance\(treespec, LeafSpec\).*", "Lightning's own use of a deprecated torch API"),
    (r".*LitLogger.*|.*litlogger.*", "advertising"),
    # a run resumed in its own folder: _keep_metrics has kept the metrics this warns about
    (r"Experiment logs directory .* exists and is not empty.*", "resume in the run's folder"),
]


def _quiet() -> None:
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.pytorch.accelerators.cuda", "lightning.pytorch"):
        log = logging.getLogger(name)
        if _QUIET not in log.filters:
            log.addFilter(_QUIET)
    for pattern, _ in _NOISE:
        warnings.filterwarnings("ignore", message=pattern)


_HELP = """usage: unroll SUBCOMMAND [options]

Train and evaluate unrolled solvers (LightningCLI with the project's defaults).

subcommands:
  fit        train a model from a config:    unroll fit --config configs/alista.yaml
  validate   one pass over the validation split with a checkpoint (--ckpt_path)
  test       one pass over the test split with a checkpoint (--ckpt_path)
  predict    reconstructions of the predict split, written to a file (--ckpt_path)
  evaluate   checkpoints against ISTA and FISTA: table, JSON, CSV and a plot

Each subcommand's options: unroll SUBCOMMAND --help (e.g. unroll fit --help).
--debug (any subcommand) shows the traceback of an error instead of its one-line message.
"""


def main(args: Optional[List[str]] = None) -> None:
    """Entry point of the ``unroll`` console script.

    Called with ``args`` (from Python, e.g. the tests) errors propagate as exceptions; as the
    console script (``args=None``) an error in the arguments, data or model prints one line
    ``unroll: error: ...`` and exits with status 1, unless ``--debug`` is given (or the
    environment sets ``UNROLL_DEBUG=1``).
    """
    from_console = args is None
    argv = list(sys.argv[1:] if args is None else args)
    debug = "--debug" in argv or os.environ.get("UNROLL_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print(_HELP, end="")
        if not argv:
            raise SystemExit(2)
        return
    _quiet()
    try:
        if argv[0] == "evaluate":
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="No seed found.*")  # evaluation draws nothing at random
                evaluate_main(argv[1:])
            return
        UnrollCLI(args=argv)
    except Exception as exc:  # noqa: BLE001 - the console prints the message, --debug the traceback
        if debug or not from_console:
            raise
        print(f"unroll: error: {_message(exc)}\n(run with --debug for the traceback)", file=sys.stderr)
        raise SystemExit(1) from None


def _message(exc: BaseException) -> str:
    """The message of the exception that started a chain (the wrappers around it add nothing)."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        nxt = exc.__cause__ or (exc.__context__ if not exc.__suppress_context__ else None)
        if nxt is None:
            break
        exc = nxt
    text = str(exc).strip() or type(exc).__name__
    return text if isinstance(exc, (ValueError, TypeError, KeyError, FileNotFoundError)) \
        else f"{type(exc).__name__}: {text}"


if __name__ == "__main__":  # pragma: no cover
    main()
