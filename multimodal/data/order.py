"""The order of the training items: :class:`multimodal.resume.EpochShuffle`, or one the task composes.

A task may compose its batches (a retriever puts products that are hard negatives of each other in one batch): it
then supplies :meth:`TrainingOrder.training_order`, an ``EpochShuffle`` whose order it changes, so exact resume and
the per-item augmentation seeds still hold.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch.utils.data import Dataset

from multimodal.resume import EpochShuffle, batches_done


@runtime_checkable
class TrainingOrder(Protocol):
    """A task that composes its training batches; None from ``training_order``: the plain shuffle."""

    def training_order(self, dataset: Dataset, seed: int, batch_size: int) -> EpochShuffle | None: ...


def epoch_order(task: object, dataset: Dataset, seed: int, batch_size: int, trainer: Any) -> EpochShuffle:
    """The training order of ``dataset`` (single process): ``task``'s own if it composes batches, else a shuffle;
    a fit resumed mid-epoch starts after the items ``trainer``'s checkpoint already trained on."""
    order = task.training_order(dataset, seed, batch_size) if isinstance(task, TrainingOrder) else None
    sampler = order if order is not None else EpochShuffle(len(dataset), seed)  # type: ignore[arg-type]
    sampler.skip = batches_done(trainer) * batch_size
    return sampler
