"""``UnrollCLI``: LightningCLI with the project's defaults, shared by ``unroll fit/...`` (``cli.py``)
and ``unroll evaluate`` (``evaluate.py``); its own module so that neither imports the other at
import time."""

from __future__ import annotations

import os

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

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        # Give the task the model and data sections of its config, so that checkpoints carry
        # them and ``unroll evaluate CKPT...`` can rebuild each model without its YAML.
        if hasattr(self.model, "cli_config"):
            cfg = self.config[self.subcommand] if self.subcommand else self.config
            dumped = yaml.safe_load(self._parser(self.subcommand).dump(cfg, skip_validation=True))
            self.model.cli_config = {k: dumped[k] for k in ("model", "data") if k in dumped}
