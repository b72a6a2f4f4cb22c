"""LightningCLI for training and evaluation: ``multimodal fit | validate | test`` (``predict`` is the batch-job
command, :mod:`multimodal.predict_cli`). Imported only when one of these runs."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
from lightning.pytorch.cli import LightningCLI

DESCRIPTION = """Train and evaluate: fit, validate, test (configs/<task>/<fusion>.yaml).
Run `multimodal <subcommand> --help` for the options of each."""


class MultimodalCLI(LightningCLI):
    """LightningCLI for every task: the model and data module are chosen by ``class_path`` in the config.

    With ``--ckpt_path`` the data module encodes labels with the vocabularies saved in the checkpoint, so
    predicting on a new catalogue uses the label set the model was trained with.
    """

    def __init__(self, args: Sequence[str] | None = None, run: bool = True) -> None:
        super().__init__(
            model_class=L.LightningModule,
            datamodule_class=L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=list(args) if args is not None else None,
            run=run,
            parser_kwargs={"description": DESCRIPTION},
        )

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """fit, validate and test; predicting is :mod:`multimodal.predict_cli`'s job (from the checkpoint alone)."""
        return {k: v for k, v in LightningCLI.subcommands().items() if k != "predict"}

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        subcommand = self.config.get("subcommand")
        if subcommand == "fit":
            from multimodal.loading import store_config_callback

            config = self.config.get(str(subcommand), self.config)
            self.trainer.callbacks.append(store_config_callback(self._parser(subcommand).dump(config, skip_none=False)))
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and subcommand in ("validate", "test"):
            from multimodal.loading import load

            # The model as trained, built by the one loader (heads and vocabularies from the checkpoint); the
            # data module takes the vocabularies from it in setup.
            self.model = load(ckpt_path, task=type(self.model)).model
