"""``UnrollCLI``: LightningCLI with the project's defaults, shared by ``unroll fit/...`` (``cli.py``)
and ``unroll evaluate`` (``evaluate.py``); its own module so that neither imports the other at
import time."""

from __future__ import annotations

import lightning as L
import yaml
from lightning.pytorch.cli import LightningCLI

__all__ = ["UnrollCLI"]


class UnrollCLI(LightningCLI):
    """LightningCLI with the project's defaults (subclass mode for model and data, config saved
    next to the logs)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("auto_configure_optimizers", False)
        super().__init__(L.LightningModule, L.LightningDataModule, *args, **kwargs)

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        # Give the task the model and data sections of its config, so that checkpoints carry
        # them and ``unroll evaluate CKPT...`` can rebuild each model without its YAML.
        if hasattr(self.model, "cli_config"):
            cfg = self.config[self.subcommand] if self.subcommand else self.config
            dumped = yaml.safe_load(self._parser(self.subcommand).dump(cfg, skip_validation=True))
            self.model.cli_config = {k: dumped[k] for k in ("model", "data") if k in dumped}
