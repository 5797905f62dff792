"""Checkpoints that survive crashes and hostile files.

What ``unroll`` promises about a checkpoint (README, "Checkpoints"):

- **never executed**: every load goes through :func:`load_checkpoint`, which unpickles with
  ``torch.load(weights_only=True)`` (tensors, numbers, strings, lists, dicts; no code). A file
  that needs more is refused with one line; :func:`load_checkpoint` ``(trust=True)`` (``unroll
  evaluate --trust_checkpoint``, ``load_from_checkpoint(..., trust=True)``) opts in for a file
  you made yourself.
- **verified**: before unpickling, the file must be a PyTorch zip archive whose records all
  pass their CRC-32 (a flipped bit, a truncated copy, an empty, text or HDF5 file is refused
  with one line naming the file and what is wrong); after loading,
  :class:`unroll.train.ReconstructionTask` checks the stored operator against the fingerprint
  recorded when the checkpoint was written.
- **atomic**: :class:`AtomicCheckpointIO` (the default of every ``unroll`` CLI run) writes a
  checkpoint to a temporary file in its target folder, fsyncs it and renames it over the target:
  a crash or a full disk leaves the previous checkpoint intact and no partial file under a
  checkpoint's name.

:func:`verify_checkpoint` checks a file without a task or a config.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import IO, Any, Dict, List, Optional, Union

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from .io import atomic_write

__all__ = ["AtomicCheckpointIO", "CheckpointError", "load_checkpoint", "verify_checkpoint",
           "default_checkpoint_plugins"]

_ZIP_MAGIC = b"PK\x03\x04"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_TRUST_HINT = ("if you made this file yourself and trust it, load it with --trust_checkpoint (unroll evaluate) "
               "or trust=True (load_checkpoint, ReconstructionTask.load_from_checkpoint)")


class CheckpointError(ValueError):
    """A file given as a checkpoint is not one, is damaged, or would need code to be run to load.
    The message is one line naming the file and what is wrong."""


def naming_file(e: CheckpointError, source: Any) -> CheckpointError:
    """``e`` with the file's name in front when its message does not name it yet (errors found by
    a task, which sees the loaded dictionary but not where it came from)."""
    name, msg = _name(source), str(e)
    if name in msg:
        return e
    return CheckpointError(f"checkpoint {name}: {msg[len('ckpt_path: '):] if msg.startswith('ckpt_path: ') else msg}")


def _name(source: Union[str, os.PathLike, IO[bytes]]) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return str(getattr(source, "name", "<file object>"))


def _describe_format(head: bytes) -> str:
    """What a file that is not a zip archive looks like, from its first bytes."""
    if head.startswith(_HDF5_MAGIC):
        return "an HDF5 file, not a checkpoint (data files are given to the data module)"
    if head[:1] == b"\x80":
        return ("a plain pickle (or a legacy, non-zip torch.save file): it cannot be verified and loading it could "
                "run code; " + _TRUST_HINT)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and "\x00" not in text:
        first = text.strip().splitlines()[0][:40] if text.strip() else ""
        return f"a text file, not a checkpoint (it starts with {first!r})"
    return f"not a PyTorch checkpoint (unknown format; it starts with bytes {head[:8].hex(' ')})"


def _check_archive(name: str, raw: Union[str, io.BytesIO], size: int, allow_pickle: bool = False) -> bool:
    """Refuse anything but an intact PyTorch zip archive (every record's CRC-32 checked), or with
    ``allow_pickle`` a plain pickle (legacy ``torch.save`` format, unverifiable); return whether
    the file is a zip archive."""
    if size == 0:
        raise CheckpointError(f"checkpoint {name}: the file is empty (0 bytes)")
    if isinstance(raw, io.BytesIO):
        head = raw.getvalue()[:64]
    else:
        with open(raw, "rb") as f:
            head = f.read(64)
    if allow_pickle and head[:1] == b"\x80":
        return False
    if not head.startswith(_ZIP_MAGIC):
        raise CheckpointError(f"checkpoint {name}: {_describe_format(head)}")
    try:
        with zipfile.ZipFile(raw) as zf:
            records = zf.namelist()
            if not any(r == "data.pkl" or r.endswith("/data.pkl") for r in records):
                raise CheckpointError(f"checkpoint {name}: a zip archive but not a PyTorch checkpoint (no data.pkl "
                                      "record)")
            bad = zf.testzip()
    except zipfile.BadZipFile as e:
        raise CheckpointError(f"checkpoint {name}: truncated or damaged ({size} bytes; {e}): the file was cut short "
                              "(an interrupted write or copy) or is not a checkpoint") from None
    except CheckpointError:
        raise
    except Exception as e:  # zlib/struct/EOF errors inside a damaged record
        raise CheckpointError(f"checkpoint {name}: damaged ({size} bytes; {type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    finally:
        if isinstance(raw, io.BytesIO):
            raw.seek(0)
    if bad is not None:
        raise CheckpointError(f"checkpoint {name}: damaged: record {bad!r} fails its CRC-32 check (a corrupted copy, "
                              "bad storage or an edited file)")
    return True


def _unpickling_refusal(e: BaseException) -> str:
    msg = str(e)
    m = re.search(r"Unsupported global: GLOBAL (\S+)", msg)
    if m:
        return f"it needs {m.group(1)}, which is not plain data"
    m = re.search(r"WeightsUnpickler error: ([^\n]+)", msg)
    return m.group(1).strip() if m else (msg.splitlines()[0] if msg else type(e).__name__)


def load_checkpoint(source: Union[str, os.PathLike, IO[bytes]], map_location: Any = None, *, trust: bool = False,
                    mmap: bool = False) -> Dict[str, Any]:
    """Load a checkpoint without running code from it, after checking it is intact.

    The file must be a PyTorch zip archive whose records all pass their CRC-32 check; it is then
    unpickled with ``torch.load(weights_only=True)``, which builds only tensors and plain data
    (what every checkpoint of ``unroll`` holds).

    Args:
        source: path or binary file object.
        map_location: as in ``torch.load``.
        trust: for a file you made yourself that needs more than plain data (or a plain, non-zip
            pickle): load it with ``weights_only=False``. Never for a file from elsewhere:
            unpickling it can run any code.
        mmap: memory-map the tensors (paths only), as ``torch.load(mmap=True)``.

    Returns:
        the checkpoint dictionary.

    Raises:
        CheckpointError: (a ``ValueError``) one line naming the file and what is wrong with it.
        FileNotFoundError: no file at ``source``.
    """
    name = _name(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {name}: no such file")
        raw: Union[str, io.BytesIO] = str(path)
        size = path.stat().st_size
    else:
        raw = io.BytesIO(source.read())
        size = len(raw.getvalue())
        mmap = False
    is_zip = _check_archive(name, raw, size, allow_pickle=trust)
    try:
        return torch.load(raw, map_location=map_location, weights_only=not trust, mmap=mmap and is_zip)
    except pickle.UnpicklingError as e:
        if trust:
            raise CheckpointError(f"checkpoint {name}: cannot be unpickled ({str(e).splitlines()[0]})") from None
        raise CheckpointError(f"checkpoint {name}: refused: loading it could run code ({_unpickling_refusal(e)}; "
                              f"checkpoints of unroll hold only tensors and plain data); {_TRUST_HINT}") from None
    except CheckpointError:
        raise
    except (EOFError, IndexError, KeyError, RuntimeError, OSError, ValueError, zipfile.BadZipFile) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(f"checkpoint {name}: cannot be read ({type(e).__name__}: {first})") from None


def verify_checkpoint(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Check a checkpoint file without loading it into a model, and say what it holds.

    Checks that ``path`` is an intact PyTorch zip archive (every record's CRC-32), that it loads
    as plain data (``weights_only=True``: no code is run), that it was written by
    :class:`unroll.train.ReconstructionTask`, and, where the operator is a matrix (dense or
    sparse), that the stored operator matches the fingerprint recorded when it was saved::

        >>> from unroll.train import verify_checkpoint
        >>> verify_checkpoint("runs/alista/checkpoints/last.ckpt")["model_class"]
        'unroll.models.alista.ALISTA'

    Also ``python -m unroll.train.verify PATH...`` (one line per file, exit status 1 if any is bad).

    Returns:
        ``{"path", "bytes", "model_class", "num_layers", "operator_fingerprint",
        "operator_check", "global_step", "epoch", "has_config", "lightning_version"}``;
        ``operator_check`` is ``"ok"`` or why it could not be checked here (the task checks
        every operator when it loads the checkpoint).

    Raises:
        CheckpointError: one line naming the file and what is wrong.
    """
    from .task import CKPT_KEY, operator_from_state

    name = str(path)
    ckpt = load_checkpoint(path, map_location="cpu")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get(CKPT_KEY), dict):
        raise CheckpointError(f"checkpoint {name}: not written by unroll's ReconstructionTask (no 'unroll' metadata)")
    meta = ckpt[CKPT_KEY]
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {name}: holds no state_dict")
    recorded = meta.get("operator_fingerprint")
    if recorded is None:
        check = "no operator recorded"
    elif not any(k.startswith("operator.") for k in state):
        check = "not checked: the operator's state is not stored"
    else:
        try:
            op = operator_from_state(state)
        except ValueError:
            check = "not checked here: not a matrix operator (checked when a task loads it)"
        else:
            if op.fingerprint() != recorded:
                raise CheckpointError(f"checkpoint {name}: the stored operator (fingerprint {op.fingerprint()}) does "
                                      f"not match the one recorded when it was saved ({recorded}): the file is "
                                      "corrupted or was edited")
            check = "ok"
    return {"path": name, "bytes": os.path.getsize(path), "model_class": meta.get("model_class"),
            "num_layers": meta.get("num_layers"), "operator_fingerprint": recorded, "operator_check": check,
            "global_step": ckpt.get("global_step"), "epoch": ckpt.get("epoch"),
            "has_config": bool(meta.get("config")), "lightning_version": ckpt.get("pytorch-lightning_version")}


def _is_local(path: Any) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with atomic local writes and safe, verified loads.

    Saving writes to a temporary file in the checkpoint's own folder (never the system temp
    folder), fsyncs it and renames it over the target (``os.replace``); on any error the
    temporary file is removed, so a crash, a ``kill``, or a full disk leaves the previous
    checkpoint intact and no partial file under a checkpoint's name (a ``kill -9`` can leave a
    hidden ``.NAME.*.tmp`` beside it, never a ``*.ckpt``). Loading goes through
    :func:`load_checkpoint` (CRC-checked, ``weights_only=True``). Remote (fsspec URL) paths fall
    back to Lightning's own writer.

    The ``unroll`` CLI uses it for every run unless the trainer is given another CheckpointIO
    (``--trainer.plugins``).

    Args:
        trust: load files that need more than plain data (``weights_only=False``); only for
            checkpoints you made yourself. Lightning's ``weights_only=False`` (``trainer.fit(...,
            weights_only=False)``) opts in for one load as well.
    """

    def __init__(self, trust: bool = False) -> None:
        super().__init__()
        self.trust = bool(trust)

    def save_checkpoint(self, checkpoint: Dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        target = str(path)[len("file://"):] if str(path).startswith("file://") else path
        atomic_write(target, lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(self, path, map_location: Optional[Any] = None,
                        weights_only: Optional[bool] = None) -> Dict[str, Any]:
        trust = self.trust or weights_only is False
        if not _is_local(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=not trust)
        target = str(path)[len("file://"):] if str(path).startswith("file://") else path
        return load_checkpoint(target, map_location=map_location or (lambda storage, loc: storage), trust=trust)


def default_checkpoint_plugins(plugins: Any, strategy: Any = None) -> Any:
    """``plugins`` (a Trainer's ``plugins`` argument) with an :class:`AtomicCheckpointIO` added,
    unless it already holds a CheckpointIO or the strategy brings its own (a ``Strategy`` object
    with a ``checkpoint_io``, or FSDP/DeepSpeed/XLA, which write checkpoints their own way)."""
    from lightning.fabric.plugins import CheckpointIO
    from lightning.pytorch.strategies import Strategy

    items: List[Any] = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    if any(isinstance(p, CheckpointIO) for p in items):
        return plugins
    if isinstance(strategy, Strategy) and getattr(strategy, "_checkpoint_io", None) is not None:
        return plugins
    if isinstance(strategy, str) and any(k in strategy.lower() for k in ("fsdp", "deepspeed", "xla")):
        return plugins
    return [*items, AtomicCheckpointIO()]
