"""``WordCounter``: a LightningModule that regresses the number of words in a product's title from its photo."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from encoders.types import ImageTransform, VisionEncoder


class WordCount:
    """The collate's text function: each product's title word count, ``words (B,)`` (NaN where the title is
    unknown, as when predicting from a photo alone). Picklable, for DataLoader workers."""

    def __init__(self, column: str) -> None:
        self.column = column

    def __call__(self, texts: dict[str, list[str | None]]) -> dict[str, Tensor]:
        if self.column not in texts:
            return {}
        counts = [float(len(t.split())) if t else float("nan") for t in texts[self.column]]
        return {"words": torch.tensor(counts)}


class WordCounter(L.LightningModule):
    """A vision tower and a normalised linear head: photo -> the word count of the product's title.

    Args:
        vision: the vision encoder (its pooled vector feeds the head).
        text_column: the column whose words are counted (training targets only: prediction reads the photo).
        lr: Adam's learning rate.
    """

    def __init__(self, vision: VisionEncoder, text_column: str = "title", lr: float = 0.01) -> None:
        super().__init__()
        self.vision = vision
        # Normalised first: a tiny tower's batch-norm statistics after a few steps put its eval features on another
        # scale than its training ones.
        self.head = nn.Sequential(nn.LayerNorm(vision.output_dim), nn.Linear(vision.output_dim, 1))
        self.text_column = text_column
        self.lr = lr

    # The preprocessing ProductDataModule and the Predictor ask a task for.
    def image_transform(self, train: bool) -> ImageTransform:
        return self.vision.image_transform(train)

    def text_fn(self) -> WordCount:
        return WordCount(self.text_column)

    def forward(self, pixel_values: Tensor) -> Tensor:
        """``pixel_values (B, 3, H, W)`` -> predicted word counts ``(B,)``."""
        return self.head(self.vision(pixel_values).pooled).squeeze(-1)

    def _error(self, batch: dict[str, Any]) -> Tensor:
        """Prediction minus target over the products whose title is known, ``(K,)``."""
        known = ~batch["words"].isnan()
        return self(batch["pixel_values"])[known] - batch["words"][known]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        if not batch["ids"]:
            return None  # every product of this batch was skipped
        loss = self._error(batch).pow(2).mean()
        self.log("train/mse", loss, batch_size=len(batch["ids"]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if batch["ids"]:
            self.log("val/mae", self._error(batch).abs().mean(), batch_size=len(batch["ids"]))

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        if not batch["ids"]:
            return {"ids": [], "words": torch.empty(0)}
        return {"ids": batch["ids"], "words": self(batch["pixel_values"])}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)
