"""Tagging metrics (torchmetrics) per attribute and per tag column, and confusion-matrix plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MultilabelAveragePrecision,
    MultilabelF1Score,
)

from multimodal.data.dataset import IGNORE_INDEX


class TaggingMetrics(nn.Module):
    """Accuracy, macro-F1 and a confusion matrix per attribute; mAP and F1 per tag column.

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
                    }
                )
                for a, v in vocabularies.items()
            }
        )
        self.confusion = nn.ModuleDict(
            {a: MulticlassConfusionMatrix(len(v), ignore_index=IGNORE_INDEX) for a, v in vocabularies.items()}
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
                self.per_attribute[a].update(logits[a], target)
                self.confusion[a].update(logits[a], target)
        for c, metrics in self.per_tag_column.items():
            target = batch["tags"][c]
            known = (target != IGNORE_INDEX).all(dim=1)
            if known.any():
                metrics.update(logits[f"tags/{c}"][known].sigmoid(), target[known].long())

    def compute_and_reset(self, stage: str) -> dict[str, Tensor]:
        """``{stage}/{attribute}/acc``, ``.../macro_f1``, ``{stage}/{tags}/mAP``, means over attributes."""
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
        for cm in self.confusion.values():
            cm.reset()
        return out


def save_confusion_matrices(metrics: TaggingMetrics, folder: Path) -> list[Path]:
    """One PNG per attribute with the confusion matrix (rows: true label, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for a, cm in metrics.confusion.items():
        if not cm.update_count:
            continue
        labels = metrics.vocabularies[a]
        size = max(6.0, 0.25 * len(labels))
        fig, ax = plt.subplots(figsize=(size, size))
        cm.plot(ax=ax, labels=labels, add_text=len(labels) <= 20)
        ax.set_title(f"{a}: confusion matrix (rows true, columns predicted)")
        fig.tight_layout()
        path = folder / f"{a}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths
