"""The ``unroll`` command: LightningCLI's ``fit``/``validate``/``test``/``predict`` plus ``evaluate``.

    unroll fit --config configs/alista.yaml
    unroll evaluate --config configs/alista.yaml --ckpt_path runs/alista/.../last.ckpt --output_dir eval/

Configs name the task and the data module by class path (subclass mode), so any
``LightningModule``/``LightningDataModule`` of the project (or the user's) can be trained.
Unknown keys in a config are errors (jsonargparse), not silently ignored.
"""

from __future__ import annotations

import sys
from typing import List, Optional

from .unroll_cli import UnrollCLI

__all__ = ["UnrollCLI", "main"]


def main(args: Optional[List[str]] = None) -> None:
    """Entry point of the ``unroll`` console script."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] == "evaluate":
        from .evaluate import evaluate_main

        evaluate_main(argv[1:])
        return
    UnrollCLI(args=args)  # None: LightningCLI reads sys.argv itself


if __name__ == "__main__":  # pragma: no cover
    main()
