"""The tagger without torch: its export's graphs on NumPy batches (the probabilities and fused vectors of
:class:`multimodal.onnx.runtime.OnnxTagger`), the Python API (``predict``, ``predict_proba``, ``extract_embedding``)
and ``multimodal predict``'s rows job."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from multimodal.errors import UserError
from multimodal.lite.base import LiteModel, Predictor, Row, frame
from multimodal.lite.sessions import tagger_widths
from multimodal.tagging.task import TASK


class LiteTagger(LiteModel):
    """A :class:`~multimodal.tagging.tagger.ProductTagger` export: ``predict_step``, ``decode`` and ``fused``."""

    def __init__(self, folder: str | Path, int8: bool = False) -> None:
        super().__init__(folder, int8)
        self.vocabularies: dict[str, list[str]] = self.settings["vocabularies"]
        self.tag_vocabularies: dict[str, list[str]] = self.settings["tag_vocabularies"]
        self.tag_threshold: float = float(self.settings["tag_threshold"])
        self.fused_dim: int = int(self.settings["fused_dim"])
        self.keys = [*self.vocabularies, *(f"tags/{k}" for k in self.tag_vocabularies)]
        self.export.check_recorded_widths()
        self.export.session("tagger")  # the graph's own widths, and a graph that cannot be read, now

    def widths(self, name: str) -> dict[str, tuple[str, int]]:
        return tagger_widths(name, self.vocabularies, self.tag_vocabularies, self.fused_dim)

    def outputs(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        """The outputs of the graph for a batch: photo-only or text-only when no item has the other, else both."""
        if not batch["has_text"].any() and self.export.has_graph("tagger_image"):
            return self.export.run("tagger_image", batch)
        if not batch["has_image"].any() and self.export.has_graph("tagger_text"):
            return self.export.run("tagger_text", batch)
        return self.export.run("tagger", batch)

    def predict_step(self, batch: dict[str, Any]) -> dict[str, Any]:
        if not batch["ids"]:
            return {"ids": [], "probs": {}}
        out = self.outputs(batch)
        return {"ids": batch["ids"], "probs": {k: out[k] for k in self.keys}}

    def fused(self, batch: dict[str, Any]) -> np.ndarray:
        return self.outputs(batch)["fused"]

    def decode(self, probs: dict[str, np.ndarray], top_k: int = 1) -> list[dict[str, Any]]:
        return decode_probs(probs, self.vocabularies, self.tag_vocabularies, self.tag_threshold, top_k)


def decode_probs(
    probs: dict[str, np.ndarray],
    vocabularies: dict[str, list[str]],
    tag_vocabularies: dict[str, list[str]],
    tag_threshold: float,
    top_k: int = 1,
) -> list[dict[str, Any]]:
    """:func:`multimodal.tagging.decode.decode_probs` on NumPy: per product the label names and scores of every
    attribute (``<attribute>_top`` when ``top_k > 1``) and the tags above ``tag_threshold``."""
    n = next(iter(probs.values())).shape[0]
    out: list[dict[str, Any]] = [{} for _ in range(n)]
    for name, vocab in vocabularies.items():
        p = probs[name].astype(np.float32)
        idx = np.argsort(-p, axis=-1, kind="stable")[:, : min(top_k, len(vocab))]
        score = np.take_along_axis(p, idx, axis=-1)
        for i in range(n):
            out[i][name] = vocab[idx[i, 0]]
            out[i][f"{name}_score"] = round(float(score[i, 0]), 6)
            if top_k > 1:
                out[i][f"{name}_top"] = [[vocab[j], round(float(s), 6)] for j, s in zip(idx[i], score[i], strict=True)]
    for name, vocab in tag_vocabularies.items():
        p = probs[f"tags/{name}"].astype(np.float32)
        for i in range(n):
            chosen = np.flatnonzero(p[i] > tag_threshold).tolist()
            out[i][name] = [vocab[j] for j in chosen]
            out[i][f"{name}_scores"] = [round(float(p[i, j]), 6) for j in chosen]
    return out


class Tagger(Predictor):
    """:class:`multimodal.tagging.predictor.Tagger` without torch: the same methods, inputs and rows."""

    task_name: ClassVar[str] = TASK.model
    top_k: int = 1

    @property
    def classes(self) -> dict[str, list[str]]:
        return dict(self.model.vocabularies)

    @property
    def tag_classes(self) -> dict[str, list[str]]:
        return dict(self.model.tag_vocabularies)

    def with_top_k(self, top_k: int) -> Tagger:
        """This API for one call decoding ``top_k`` labels per attribute (a new object sharing the model)."""
        if top_k < 1:
            raise UserError(f"top_k must be at least 1, not {top_k}")
        bound = copy.copy(self)
        bound.top_k = top_k
        return bound

    def rows(self, prediction: dict[str, Any]) -> list[Row]:
        decoded = self.model.decode(prediction["probs"], top_k=self.top_k)
        return [{"id": i, **row} for i, row in zip(prediction["ids"], decoded, strict=True)]

    def predict(self, inputs: Any, top_k: int = 1) -> Any:
        """One row per input: labels and scores per attribute, tags per tag column; ``error`` where unreadable."""
        return frame(self.with_top_k(top_k).run(inputs))

    def predict_proba(self, inputs: Any) -> dict[str, Any]:
        """Per attribute (and ``tags/<column>``) a DataFrame ``(N, classes)`` of probabilities indexed by id; NaN
        rows for unreadable inputs."""
        import pandas as pd

        names = {**self.classes, **{f"tags/{c}": v for c, v in self.tag_classes.items()}}
        parts: dict[str, list[tuple[int, np.ndarray]]] = {k: [] for k in names}
        order: list[tuple[int, str]] = []
        for prediction, skipped, batch in self.predictions(inputs):
            for key in names:
                if prediction["ids"]:
                    parts[key] += list(zip(batch["positions"], prediction["probs"][key], strict=True))
                parts[key] += [(s["position"], np.full(len(names[key]), np.nan)) for s in skipped]
            order += list(zip(batch["positions"], batch["ids"], strict=True))
            order += [(s["position"], s["id"]) for s in skipped]
        index = pd.Index([i for _, i in sorted(order)], name="id")
        rows = {key: [p for _, p in sorted(parts[key], key=lambda pp: pp[0])] for key in names}
        return {key: pd.DataFrame(np.stack(rows[key]), index=index, columns=vocab) for key, vocab in names.items()}

    def extract_embedding(self, inputs: Any) -> np.ndarray:
        """The fused vector ``(N, D)`` every head reads (NaN rows for unreadable inputs)."""
        vectors: list[tuple[int, np.ndarray]] = []
        for _, skipped, batch in self.predictions(inputs, step=False):
            if batch["ids"]:
                vectors += list(zip(batch["positions"], self.model.fused(batch).astype(np.float32), strict=True))
            vectors += [(s["position"], np.full(self.model.fused_dim, np.nan, np.float32)) for s in skipped]
        return np.stack([v for _, v in sorted(vectors, key=lambda pv: pv[0])])


def tag_rows(job: Any) -> dict[str, Any] | None:
    """``multimodal predict`` on a tagger export: one row of labels and scores per input row
    (:func:`multimodal.tagging.job.tag_rows`, run by :func:`multimodal.lite.jobs.run_blocks`)."""
    from multimodal.tagging.job import tagger_job

    return tagger_job(job, Tagger(job.loaded, batch_size=job.options.batch_size))


MODEL, API, JOB = LiteTagger, Tagger, tag_rows  # what the task contract's ``lite`` module declares
