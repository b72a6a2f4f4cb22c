"""Tagging metrics (torchmetrics) per attribute and per tag column; per-class results for the model card and the
confusion-matrix plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCalibrationError,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MultilabelAveragePrecision,
    MultilabelF1Score,
)
from torchmetrics.utilities import dim_zero_cat

from multimodal.data.dataset import IGNORE_INDEX
from multimodal.model_card.report import ClassReport

CALIBRATION_BINS = 15


class TaggingMetrics(nn.Module):
    """Accuracy, macro-F1 and expected calibration error (logged), per-class F1 and a confusion matrix (reported,
    :meth:`class_reports`) per attribute; mAP and F1 per tag column.

    Unknown labels (``IGNORE_INDEX``) are left out. Under DDP, torchmetrics gathers the states at ``compute``.
    """

    def __init__(self, vocabularies: dict[str, list[str]], tag_vocabularies: dict[str, list[str]]) -> None:
        super().__init__()
        self.attributes = list(vocabularies)
        self.vocabularies = vocabularies
        self.per_attribute = nn.ModuleDict(
            {
                a: MetricCollection(
                    {
                        "acc": MulticlassAccuracy(len(v), average="micro", ignore_index=IGNORE_INDEX),
                        "macro_f1": MulticlassF1Score(len(v), average="macro", ignore_index=IGNORE_INDEX),
                        "ece": MulticlassCalibrationError(len(v), CALIBRATION_BINS, ignore_index=IGNORE_INDEX),
                    }
                )
                for a, v in vocabularies.items()
            }
        )
        self.per_class = nn.ModuleDict(
            {
                a: MetricCollection(
                    {
                        "f1": MulticlassF1Score(len(v), average="none", ignore_index=IGNORE_INDEX),
                        "confusion": MulticlassConfusionMatrix(len(v), ignore_index=IGNORE_INDEX),
                    }
                )
                for a, v in vocabularies.items()
            }
        )
        self.per_tag_column = nn.ModuleDict(
            {
                c: MetricCollection(
                    {
                        "mAP": MultilabelAveragePrecision(len(v), average="macro"),
                        "f1": MultilabelF1Score(len(v), average="macro"),
                    }
                )
                for c, v in tag_vocabularies.items()
                if len(v) > 0
            }
        )

    def update(self, logits: dict[str, Tensor], batch: dict[str, Any]) -> None:
        for i, a in enumerate(self.attributes):
            target = batch["labels"][:, i]
            if (target != IGNORE_INDEX).any():
                # Probabilities, not logits: the calibration error reads them as they are when all lie in [0, 1].
                probs = logits[a].float().softmax(-1)
                self.per_attribute[a].update(probs, target)
                self.per_class[a].update(probs, target)
        for c, metrics in self.per_tag_column.items():
            target = batch["tags"][c]
            known = (target != IGNORE_INDEX).all(dim=1)
            if known.any():
                metrics.update(logits[f"tags/{c}"][known].sigmoid(), target[known].long())

    def compute_and_reset(self, stage: str) -> dict[str, Tensor]:
        """``{stage}/{attribute}/acc``, ``.../macro_f1``, ``.../ece``, ``{stage}/{tags}/mAP``, ``.../f1``, and the
        means of accuracy and macro-F1 over attributes."""
        out: dict[str, Tensor] = {}
        for name, collection in [*self.per_attribute.items(), *self.per_tag_column.items()]:
            if any(m.update_count for m in collection.values()):
                for metric, value in collection.compute().items():
                    out[f"{stage}/{name}/{metric}"] = value
            collection.reset()
        for metric in ("acc", "macro_f1"):
            values = [out[f"{stage}/{a}/{metric}"] for a in self.attributes if f"{stage}/{a}/{metric}" in out]
            if values:
                out[f"{stage}/mean_{metric}"] = torch.stack(values).mean()
        for collection in self.per_class.values():
            collection.reset()
        return out

    def class_reports(self) -> list[ClassReport]:
        """Per-class F1, support, confusion counts and calibration bins of every attribute with known labels, as
        plain values (call before :meth:`compute_and_reset`; under DDP every rank calls it, states are gathered)."""
        reports = []
        for a, collection in self.per_class.items():
            if not any(m.update_count for m in collection.values()):
                continue
            values = collection.compute()
            confusion = values["confusion"].long()
            calibration = self.per_attribute[a]["ece"]
            with calibration.sync_context():
                confidences, correct = dim_zero_cat(calibration.confidences), dim_zero_cat(calibration.accuracies)
            reports.append(
                ClassReport(
                    name=a,
                    labels=list(self.vocabularies[a]),
                    support=confusion.sum(1).tolist(),
                    f1=values["f1"].float().tolist(),
                    confusion=confusion.tolist(),
                    ece=float(calibration.compute()),
                    bins=reliability_bins(confidences.float().cpu(), correct.float().cpu()),
                )
            )
        return reports


def reliability_bins(
    confidences: Tensor, correct: Tensor, n_bins: int = CALIBRATION_BINS
) -> list[tuple[float, float, int]]:
    """``(mean confidence, accuracy, count)`` per equal-width confidence bin (a confidence of 1 in the last bin).

    Args:
        confidences: ``(N,)`` top-1 probabilities.
        correct: ``(N,)`` 1.0 where the top-1 class was right.
    """
    edges = torch.linspace(0, 1, n_bins + 1)
    index = (torch.bucketize(confidences, edges, right=True) - 1).clamp(0, n_bins - 1)
    count = torch.bincount(index, minlength=n_bins)
    conf = torch.zeros(n_bins).scatter_add_(0, index, confidences) / count.clamp(min=1)
    acc = torch.zeros(n_bins).scatter_add_(0, index, correct) / count.clamp(min=1)
    return [(float(c), float(a), int(n)) for c, a, n in zip(conf, acc, count, strict=True)]


def save_confusion_matrices(reports: list[ClassReport], folder: Path) -> list[Path]:
    """One PNG per attribute: the row-normalised confusion matrix of its most frequent classes, shares written in
    the cells (what a task draws itself when no model card draws its plots)."""
    from multimodal.model_card.plots import confusion_plot

    folder.mkdir(parents=True, exist_ok=True)
    return [confusion_plot(r, folder / f"{r.name}.png") for r in reports]
