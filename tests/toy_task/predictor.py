"""``WordCounts``: the Python API of a trained :class:`~toy_task.model.WordCounter`."""

from __future__ import annotations

from typing import Any, ClassVar

import pandas as pd

from multimodal.inference import Predictor, Row, frame
from toy_task.task import TASK


class WordCounts(Predictor):
    """Predicts the word count of each product's title from its photo.

    Example::

        counts = multimodal.load("runs/word_count/.../last.ckpt")
        df = counts.predict(["examples/fashion-products/images/1580.jpg"])   # columns id, words
    """

    task_name: ClassVar[str] = TASK.model
    require_image: ClassVar[bool] = True

    def required_columns(self) -> list[str]:
        """The photo alone: the title is what the model predicts about."""
        return [self.columns.image]

    def rows(self, prediction: dict[str, Any]) -> list[Row]:
        words = prediction["words"].float().cpu().tolist()
        return [{"id": i, "words": w} for i, w in zip(prediction["ids"], words, strict=True)]

    def predict(self, inputs: Any) -> pd.DataFrame:
        """One row per input: ``id``, ``words``; ``error`` for inputs that could not be read."""
        return frame(self.run(inputs))
