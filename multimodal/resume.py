"""Exact resume of ``fit``: after a kill, ``fit --ckpt_path`` ends with the weights of an uninterrupted run.

Three things decide a run's numbers besides the checkpointed weights and optimizer: the order of the training
items, their augmentation, and the random numbers of the model (dropout, modality dropout, hard negatives).

- :class:`EpochShuffle` makes the order a function of (seed, epoch) and starts a resumed epoch after the items the
  checkpoint already trained on; it gives each item its own augmentation seed, so an item is augmented alike
  whatever worker, batch or resume it lands in (:class:`multimodal.data.dataset.ProductDataset` applies it).
- :class:`RandomState` saves the global random states in every checkpoint and puts them back right before the first
  training batch after a resume (not when a checkpoint is merely loaded for prediction).

One process only: under DDP Lightning re-splits the order across ranks and the loader falls back to plain shuffling.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import Sampler


class EpochShuffle(Sampler[tuple[int, int]]):
    """Yields ``(index, augmentation seed)`` of ``n`` items in an order fixed by ``seed`` and the epoch.

    ``skip`` items are left out of the next pass only (the part of an epoch a resumed run already trained on); the
    length stays ``n``, so Lightning counts the epoch's batches as in an uninterrupted run.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch, self.skip = n, seed, 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        seeds = torch.randint(0, 2**31 - 1, (self.n,), generator=g).tolist()
        skip, self.skip = self.skip, 0
        return iter(list(zip(order, seeds, strict=True))[skip:])


class RandomState(Callback):
    """Saves torch's, Python's and NumPy's global random states with every checkpoint; restores them before the first
    training batch of a resumed fit."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],  # plain types: loadable with weights_only
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self._pending is None:
            return
        state, self._pending = self._pending, None
        torch.set_rng_state(state["torch"])
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def batches_done(trainer: Any) -> int:
    """Training batches of the current epoch already done (non-zero only while a fit resumes mid-epoch)."""
    if trainer is None or not trainer.fit_loop.restarting:
        return 0
    # A checkpoint written at the end of a batch counts that batch as processed, not yet as completed.
    return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)
