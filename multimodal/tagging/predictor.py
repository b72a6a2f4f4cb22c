"""``Tagger``: the Python API of a trained :class:`ProductTagger` (AutoGluon's ``predict`` / ``predict_proba``)."""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from multimodal.errors import UserError
from multimodal.inference import Predictor, Row, frame
from multimodal.tagging.task import TASK


class Tagger(Predictor):
    """Tags products from their photo and text with a trained tagger.

    Inputs (every method): a DataFrame or a list of dicts with the columns the model reads (label columns are not
    needed), or a list of image paths / PIL images (text unknown). Rows come back in input order; an unreadable
    image gives that row an ``error`` and the rest are predicted.

    Example::

        tagger = multimodal.load("runs/tagging/.../best.ckpt")
        df = tagger.predict(catalog_df, top_k=3)
        probs = tagger.predict_proba(catalog_df)["category"]   # (N, classes) DataFrame
    """

    task_name: ClassVar[str] = TASK.model
    top_k: int = 1

    @property
    def classes(self) -> dict[str, list[str]]:
        """Class names per attribute (the training vocabularies)."""
        return dict(self.model.vocabularies)

    @property
    def tag_classes(self) -> dict[str, list[str]]:
        """Tag names per tag column."""
        return dict(self.model.tag_vocabularies)

    def with_top_k(self, top_k: int) -> Tagger:
        """This API for one call decoding ``top_k`` labels per attribute: a new object sharing the model, which it
        never writes to, so concurrent calls each get their own."""
        if top_k < 1:
            raise UserError(f"top_k must be at least 1, not {top_k}")
        bound = copy.copy(self)
        bound.top_k = top_k
        return bound

    def rows(self, prediction: dict[str, Any]) -> list[Row]:
        decoded = self.model.decode(prediction["probs"], top_k=self.top_k)
        return [{"id": i, **row} for i, row in zip(prediction["ids"], decoded, strict=True)]

    def predict(self, inputs: Any, top_k: int = 1) -> pd.DataFrame:
        """One row per input: ``id``, then per attribute its label and ``<attribute>_score`` (and, for
        ``top_k > 1``, ``<attribute>_top``: ``[[label, probability], ...]``), per tag column the tags above the
        threshold and ``<column>_scores``; ``error`` for inputs that could not be read."""
        return frame(self.with_top_k(top_k).run(inputs))

    def predict_proba(self, inputs: Any) -> dict[str, pd.DataFrame]:
        """Per attribute (and per tag column, as ``tags/<column>``) a DataFrame ``(N, classes)`` of probabilities,
        indexed by id, with the class names as columns; rows of unreadable inputs are NaN. Each attribute's rows
        sum to 1; tag probabilities are independent."""
        names = {**self.classes, **{f"tags/{c}": v for c, v in self.tag_classes.items()}}
        ids: list[str] = []
        parts: dict[str, list[tuple[int, np.ndarray]]] = {k: [] for k in names}
        order: list[tuple[int, str]] = []
        for prediction, skipped, batch in self.predictions(inputs):
            for key in names:
                if prediction["ids"]:
                    probs = prediction["probs"][key].float().cpu().numpy()
                    parts[key] += list(zip(batch["positions"], probs, strict=True))
                parts[key] += [(s["position"], np.full(len(names[key]), np.nan)) for s in skipped]
            order += list(zip(batch["positions"], batch["ids"], strict=True))
            order += [(s["position"], s["id"]) for s in skipped]
        ids = [i for _, i in sorted(order)]
        out = {}
        for key, vocab in names.items():
            rows = [p for _, p in sorted(parts[key], key=lambda pp: pp[0])]
            out[key] = pd.DataFrame(np.stack(rows), index=pd.Index(ids, name="id"), columns=vocab)
        return out

    @torch.inference_mode()
    def extract_embedding(self, inputs: Any) -> np.ndarray:
        """The fused vector ``(N, D)`` every head reads (NaN rows for unreadable inputs)."""
        vectors: list[tuple[int, np.ndarray]] = []
        dim = self.model.fused_dim
        for _, skipped, batch in self.predictions(inputs, step=False):
            if batch["ids"]:
                fused = self.model.fused(self.on_device(batch)).float().cpu().numpy()
                vectors += list(zip(batch["positions"], fused, strict=True))
            vectors += [(s["position"], np.full(dim, np.nan, np.float32)) for s in skipped]
        return np.stack([v for _, v in sorted(vectors, key=lambda pv: pv[0])])
