"""``python -m unroll.train.verify PATH...``: check checkpoint files (nothing in them is executed).

Prints ``OK`` with what each file holds, or ``BAD`` and what is wrong; exit status 1 if any is
bad. See :func:`unroll.train.verify_checkpoint`.
"""

from __future__ import annotations

import sys
from typing import List, Optional

from .checkpoint import CheckpointError, verify_checkpoint

__all__ = ["main"]


def main(argv: Optional[List[str]] = None) -> int:
    """Verify every path in ``argv`` (default ``sys.argv[1:]``); return 0 if all are good, else 1."""
    status = 0
    for p in (sys.argv[1:] if argv is None else argv):
        try:
            info = verify_checkpoint(p)
        except (CheckpointError, FileNotFoundError) as e:
            print(f"BAD  {e}")
            status = 1
        else:
            print(f"OK   {p}: {info['model_class']} ({info['num_layers']} layers), step {info['global_step']}, "
                  f"operator {info['operator_fingerprint']} ({info['operator_check']})")
    return status


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
