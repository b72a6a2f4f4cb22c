"""The Lightning callbacks that write the model card: :class:`TrainingCard` in ``fit``, :class:`EvaluationCard` in
``validate`` / ``test --ckpt_path``; :func:`attach_model_card` is what ``multimodal fit|validate|test`` calls.

A *run folder* is the folder that holds a run's ``checkpoints/`` (or the checkpoints themselves when their folder
has another name). The card lives there; an evaluation of one of its checkpoints writes its logs and plots into
``<run>/<stage>/<checkpoint name>/`` of that folder, never into a new logger version folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import lightning as L
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from multimodal.errors import UserError
from multimodal.model_card.card import (
    data_section,
    evaluation_results,
    new_card,
    read_card,
    relative,
    sha256_of,
    write_card,
)
from multimodal.model_card.plots import draw
from multimodal.model_card.report import DrawsEvaluationPlots, EvaluationReport, EvaluationReports

PREFIX = {"validate": "val", "test": "test"}  # the stage's name in the scalars a task logs


@runtime_checkable
class ReportsData(Protocol):
    """A data module that reports what it read: ``manifest``, ``rows`` per split, ``skipped`` products and
    ``skipped_photos`` (as :meth:`multimodal.data.datamodule.ProductDataModule.report`)."""

    def report(self) -> dict[str, Any]: ...


def run_folder(checkpoint_dir: Path) -> Path:
    """The folder of a run, from the folder its checkpoints are saved in."""
    return checkpoint_dir.parent if checkpoint_dir.name == "checkpoints" else checkpoint_dir


def attach_model_card(
    trainer: L.Trainer, subcommand: str | None, ckpt_path: str | None, checkpoint: dict | None, config: str | None
) -> None:
    """Add the card's callback for ``fit`` (``config``: the resolved config stored with the checkpoints) or for
    ``validate`` / ``test`` of the checkpoint at ``ckpt_path`` (``checkpoint``: its content). For an evaluation, the
    loggers are pointed at the checkpoint's run folder and a folder holding files not of ours is refused first."""
    if subcommand == "fit" and config is not None:
        trainer.callbacks.append(TrainingCard(config))
    elif subcommand in PREFIX and ckpt_path and checkpoint is not None:
        card = EvaluationCard(subcommand, Path(ckpt_path), checkpoint)
        card.check_outputs()
        point_loggers_at(trainer, card.folder)
        trainer.callbacks.append(card)


def point_loggers_at(trainer: L.Trainer, folder: Path) -> None:
    """Rebuild the CSV and TensorBoard loggers to write into ``folder`` (they would open a new version folder
    beside the training run's); other loggers keep their own places."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    trainer.loggers = [
        type(lg)(save_dir=str(folder.parent), name="", version=folder.name)
        if type(lg) in (CSVLogger, TensorBoardLogger)
        else lg
        for lg in trainer.loggers
    ]


def data_of(trainer: L.Trainer, hashes: dict[str, str | None]) -> dict[str, Any] | None:
    """The data section from the trainer's data module, if it reports; ``hashes`` caches one hash per manifest."""
    datamodule = trainer.datamodule
    if not isinstance(datamodule, ReportsData):
        return None
    report = datamodule.report()
    manifest = str(report.get("manifest"))
    if manifest not in hashes:
        hashes[manifest] = sha256_of(manifest)
    return data_section(report, hashes[manifest])


class TrainingCard(Callback):
    """In ``fit``: the card (data, settings, training) written into the run folder when training starts and again
    when it ends or stops, by rank 0.

    Args:
        config: the resolved config as YAML, as stored in every checkpoint.
    """

    def __init__(self, config: str) -> None:
        self.settings = yaml.safe_load(config) or {}
        self.folder: Path | None = None
        self.card: dict[str, Any] | None = None
        self.hashes: dict[str, str | None] = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        checkpoints = trainer.checkpoint_callback
        if not trainer.is_global_zero or not isinstance(checkpoints, ModelCheckpoint) or checkpoints.dirpath is None:
            return  # no checkpoint, no card
        folder = run_folder(Path(checkpoints.dirpath))
        previous = read_card(folder)  # refuses a folder whose card is not ours, before any step is taken
        self.card = new_card(type(pl_module).__name__, self.settings)
        self.card["evaluations"] = (previous or {}).get("evaluations", {})
        self.folder = folder
        self._write(trainer, "running")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, "interrupted" if trainer.interrupted else "finished")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._write(trainer, f"stopped by {type(exception).__name__}")

    def _write(self, trainer: L.Trainer, status: str) -> None:
        if self.card is None or self.folder is None:
            return
        checkpoints = trainer.checkpoint_callback
        assert isinstance(checkpoints, ModelCheckpoint)  # as on_fit_start found it
        score = checkpoints.best_model_score
        self.card["data"] = data_of(trainer, self.hashes)
        self.card["training"] = {
            "status": status,
            "epochs": trainer.current_epoch,
            "steps": trainer.global_step,
            "monitor": checkpoints.monitor,
            "best_checkpoint": relative(checkpoints.best_model_path, self.folder),
            "best_score": float(score) if score is not None else None,
            "last_checkpoint": relative(checkpoints.last_model_path, self.folder),
        }
        write_card(self.folder, self.card, "multimodal fit")


class EvaluationCard(Callback, DrawsEvaluationPlots):
    """In ``validate`` / ``test --ckpt_path``: the evaluation's entry in the card of the checkpoint's run folder,
    with the scalars the task logged, what it reports (:class:`EvaluationReports`), the data and the plots.

    Args:
        subcommand: ``validate`` or ``test``.
        ckpt_path: the checkpoint evaluated.
        checkpoint: its content (only its stored config, epoch, step and checkpoint-callback state are kept).
    """

    def __init__(self, subcommand: str, ckpt_path: Path, checkpoint: dict[str, Any]) -> None:
        from multimodal.loading import stored_config

        self.subcommand, self.prefix = subcommand, PREFIX[subcommand]
        self.run = run_folder(ckpt_path.resolve().parent)
        self.key = f"{subcommand}/{ckpt_path.stem}"
        self.folder = self.run / subcommand / ckpt_path.stem
        self.settings = stored_config(checkpoint, ckpt_path)
        self.entry: dict[str, Any] = {
            "stage": subcommand,
            "checkpoint": relative(ckpt_path, self.run),
            "epoch": checkpoint.get("epoch"),
            "step": checkpoint.get("global_step"),
            "folder": relative(self.folder, self.run),
        }
        self.training = training_from_checkpoint(checkpoint, self.run)
        self.hashes: dict[str, str | None] = {}

    def check_outputs(self) -> None:
        """Refuse, before anything runs, a run folder whose card is not ours, or an output folder that holds
        files our card does not account for."""
        card = read_card(self.run)
        ours = self.key in ((card or {}).get("evaluations") or {})
        if self.folder.exists() and any(self.folder.iterdir()) and not ours:
            raise UserError(
                f"{self.folder} exists and holds files that are not a {self.subcommand} output of multimodal: "
                "move it away (it is not replaced)"
            )

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Claim the output folder in the card (so a run that stops midway may be repeated)."""
        if trainer.is_global_zero:
            self._write(pl_module, {"status": "running"})

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.subcommand == "validate":
            self._finish(trainer, pl_module)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.subcommand == "test":
            self._finish(trainer, pl_module)

    def _finish(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        is_reported = isinstance(pl_module, EvaluationReports)
        report = pl_module.evaluation_report(self.prefix) if is_reported else EvaluationReport()
        self._remove_earlier_plots()
        drawn = draw(report, self.folder / "plots")
        plots = {name: [str(relative(p, self.run)) for p in paths] for name, paths in drawn.items()}
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}  # Lightning logs scalars only
        results = evaluation_results(metrics, self.prefix, report, plots)
        self._write(pl_module, {"status": "done", "data": data_of(trainer, self.hashes), **results})

    def _remove_earlier_plots(self) -> None:
        """Delete the plots an earlier run of this evaluation drew (its card entry lists them), so none of another
        attribute set lingers; only files inside this evaluation's own plot folder."""
        previous = ((read_card(self.run) or {}).get("evaluations") or {}).get(self.key) or {}
        plots = (self.folder / "plots").resolve()
        for paths in (previous.get("plots") or {}).values():
            for p in paths:
                path = (self.run / p).resolve()
                if path.parent == plots:
                    path.unlink(missing_ok=True)

    def _write(self, pl_module: L.LightningModule, update: dict[str, Any]) -> None:
        card = read_card(self.run) or new_card(type(pl_module).__name__, self.settings)
        if not card.get("training"):
            card["training"] = self.training
        card.setdefault("evaluations", {})[self.key] = {**self.entry, **update}
        write_card(self.run, card, f"multimodal {self.subcommand}")


def training_from_checkpoint(checkpoint: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The training section of a checkpoint whose run wrote no card: its epoch, step and best / last checkpoints as
    Lightning's checkpoint callback saved them."""
    states = [v for k, v in (checkpoint.get("callbacks") or {}).items() if str(k).startswith("ModelCheckpoint")]
    state = states[0] if states and isinstance(states[0], dict) else {}
    score = state.get("best_model_score")
    return {
        "status": "as saved in the checkpoint (the run wrote no card)",
        "epochs": checkpoint.get("epoch"),
        "steps": checkpoint.get("global_step"),
        "monitor": state.get("monitor"),
        "best_checkpoint": relative(state.get("best_model_path"), folder),
        "best_score": float(score) if score is not None else None,
        "last_checkpoint": relative(state.get("last_model_path"), folder),
    }
