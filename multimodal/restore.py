"""Rebuild a trained task and its data module from a checkpoint alone.

``multimodal fit`` stores the resolved ``model`` and ``data`` config (YAML text) in every checkpoint, so tools
that start from a checkpoint (export, search, caption) rebuild exactly the trained architecture and load the
weights safely (``weights_only=True``).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from multimodal.errors import UserError

CONFIG_KEY = "multimodal_config"


class StoreConfig(Callback):
    """Saves the run's resolved config (YAML text) in every checkpoint under ``multimodal_config``."""

    def __init__(self, config_yaml: str) -> None:
        self.config_yaml = config_yaml

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[CONFIG_KEY] = self.config_yaml


@dataclass
class Restored:
    """A task rebuilt from a checkpoint, with the data module from its config (overrides applied)."""

    model: L.LightningModule
    datamodule: L.LightningDataModule
    config: dict[str, Any]
    checkpoint: dict[str, Any]


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint safely, with a one-line error for a missing or foreign file."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"checkpoint not found: {p}")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not our checkpoint"
        raise UserError(f"{p} is not a readable checkpoint: {err}") from err


def restore(ckpt_path: str | Path, overrides: list[str] | None = None, task: type | None = None) -> Restored:
    """Rebuild the model and data module that wrote ``ckpt_path`` and load its weights.

    Args:
        ckpt_path: a checkpoint written by ``multimodal fit``.
        overrides: extra CLI-style arguments, e.g. ``["--data.init_args.manifest", "catalog.csv"]`` (the short
            ``--data.manifest`` form also works).
        task: if given, the model must be an instance of this class (else a clear error).
    """
    from multimodal.cli import MultimodalCLI

    checkpoint = load_checkpoint(ckpt_path)
    text = checkpoint.get(CONFIG_KEY)
    if text is None:
        raise UserError(f"{ckpt_path} has no stored config: was it written by `multimodal fit`?")
    stored = yaml.safe_load(text)
    config = {k: stored[k] for k in ("model", "data") if k in stored}
    config["trainer"] = {"logger": False, "enable_checkpointing": False}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(config, f)
    try:
        cli = MultimodalCLI(args=["--config", f.name, *(overrides or [])], run=False)
    finally:
        Path(f.name).unlink(missing_ok=True)
    model = cli.model
    if task is not None and not isinstance(model, task):
        raise UserError(f"{ckpt_path} holds a {type(model).__name__}, not a {task.__name__}")
    model.on_load_checkpoint(checkpoint)
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    return Restored(model=model, datamodule=cli.datamodule, config=stored, checkpoint=checkpoint)
