"""Lightning's progress as log lines (:class:`multimodal.progress.ProgressLog`) when stderr is not a terminal:
``fit``, ``validate``, ``test`` and the batch jobs (``predict``, ``export``, ``caption``) under nohup, cron or CI."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import ProgressBar

from multimodal.progress import ProgressLog, on_terminal


class LogProgressBar(ProgressBar):
    """One line at a bounded rate per running loop: batches done / total, rate, ETA; the epoch and the train loss
    on training lines. Only rank 0 writes."""

    def __init__(self) -> None:
        super().__init__()
        self.enabled = True
        self.log: ProgressLog | None = None

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def start(self, total: float, desc: str) -> None:
        if self.enabled:
            self.log = ProgressLog(None if total == float("inf") else total, desc, unit="batches")

    def advance(self, suffix: str = "") -> None:
        if self.enabled and self.log is not None:
            self.log.desc = self.log.desc.split(" [", 1)[0] + (f" [{suffix}]" if suffix else "")
            self.log.update(1)

    def finish(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None

    # ----------------------------------------------------------------------------------------------- hooks
    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.start(self.total_train_batches, f"{self.train_description} epoch {trainer.current_epoch}")

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        loss = trainer.callback_metrics.get("train/loss")
        self.advance(f"loss {float(loss):.4g}" if loss is not None else "")

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.finish()

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self.start(_total(trainer.num_val_batches), self.validation_description)

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        if not trainer.sanity_checking:
            self.advance()

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self.finish()

    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        self.start(_total(trainer.num_test_batches), self.test_description)

    def on_test_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        self.advance()

    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        self.finish()

    def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
        self.start(_total(trainer.num_predict_batches), self.predict_description)

    def on_predict_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        self.advance()

    def on_predict_end(self, trainer: Any, pl_module: Any) -> None:
        self.finish()


def _total(batches: Any) -> float:
    """Lightning's batch count of a loop: one number, or one per data loader."""
    return float(sum(batches)) if isinstance(batches, list) else float(batches)


def log_progress_callbacks(enabled: bool | None, callbacks: list[Any]) -> list[Any]:
    """The callbacks to add to a Trainer: a :class:`LogProgressBar` when its progress is on (``enabled`` not
    False), stderr is not a terminal and no progress bar is configured already."""
    if enabled is False or on_terminal() or any(isinstance(c, ProgressBar) for c in callbacks):
        return []
    return [LogProgressBar()]
