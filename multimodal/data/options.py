"""The data module's options checked before anything is read: one-line errors naming the config key."""

from __future__ import annotations

from multimodal.data.manifest import SPLITS
from multimodal.errors import UserError


def check_data_options(
    on_bad_sample: str,
    batch_size: int,
    num_workers: int,
    val_fraction: float,
    test_fraction: float,
    predict_split: str,
) -> None:
    """One-line errors, naming the config key, for data options out of range."""
    if on_bad_sample not in ("error", "skip"):
        raise UserError(f"data.on_bad_sample must be 'error' or 'skip', not '{on_bad_sample}'")
    if batch_size <= 0 or num_workers < 0:
        raise UserError(f"data.batch_size must be positive and data.num_workers >= 0, not {batch_size} / {num_workers}")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise UserError(
            f"data.val_fraction / test_fraction must be in [0, 1) with a sum below 1, not "
            f"{val_fraction} / {test_fraction}"
        )
    if predict_split not in ("all", *SPLITS):
        raise UserError(f"data.predict_split must be all, train, val or test, not '{predict_split}'")
