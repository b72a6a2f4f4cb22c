"""What a task reports about an evaluation beyond its logged scalars: per-class results and curves.

Plain Python values (no tensors), so the card and its plots are written without knowing the task, and a report
costs little to keep between the end of an epoch and the end of the stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ClassReport:
    """One single-label attribute: per-class scores, its confusion counts and its calibration.

    Attributes:
        name: the attribute (a column name from the config).
        labels: class names, in the head's order.
        support: true examples per class ``(C,)``.
        f1: F1 per class ``(C,)``.
        confusion: counts ``(C, C)``, rows true class, columns predicted class.
        ece: expected calibration error of the top-1 probability (L1, equal-width bins).
        bins: per confidence bin ``(mean confidence, accuracy, count)``, for the reliability diagram; bins with no
            prediction have count 0.
    """

    name: str
    labels: list[str]
    support: list[int]
    f1: list[float]
    confusion: list[list[int]]
    ece: float
    bins: list[tuple[float, float, int]]

    def most_frequent(self, n: int) -> list[int]:
        """Indices of the ``n`` classes with the most true examples (ties: head order)."""
        order = sorted(range(len(self.labels)), key=lambda i: -self.support[i])
        return [i for i in order if self.support[i] > 0][:n]

    def worst(self, n: int) -> list[int]:
        """Indices of the ``n`` classes with the lowest F1 among those with true examples (ties: more support
        first, as a miss on a frequent class costs more)."""
        seen = [i for i in range(len(self.labels)) if self.support[i] > 0]
        return sorted(seen, key=lambda i: (self.f1[i], -self.support[i]))[:n]


@dataclass
class CurveReport:
    """A score as a function of a cut-off, e.g. recall@K for K = 1, 2, ...

    Attributes:
        name: file-safe name (``recall_at_k``).
        title: what the curve shows, for the plot and the card.
        x_label: what ``x`` is (``K``).
        x: cut-offs.
        series: one line per direction or variant: ``{"text -> product": [values per x], ...}``.
    """

    name: str
    title: str
    x_label: str
    x: list[int]
    series: dict[str, list[float]]


@dataclass
class EvaluationReport:
    """Everything a task reports about one evaluation epoch beyond the scalars it logs."""

    classes: list[ClassReport] = field(default_factory=list)
    curves: list[CurveReport] = field(default_factory=list)


class EvaluationReports:
    """Mixin for a task's LightningModule: it keeps the report of its last evaluation epoch per stage (``val``,
    ``test``) for the model card, which reads it when the stage ends. A task without it still gets a card with the
    scalars it logs."""

    _evaluation_reports: dict[str, EvaluationReport] | None = None

    def keep_report(self, stage: str, report: EvaluationReport) -> None:
        """Keep ``report`` as the last one of ``stage`` (the one the card will show)."""
        self._evaluation_reports = {**(self._evaluation_reports or {}), stage: report}

    def evaluation_report(self, stage: str) -> EvaluationReport:
        """The last report of ``stage``; an empty one if no epoch of it ended."""
        return (self._evaluation_reports or {}).get(stage, EvaluationReport())


class DrawsEvaluationPlots:
    """Marks a callback that draws the plots of what tasks report (the model card's): a task then draws none of its
    own, as it does under a plain Trainer."""


def plots_drawn_for(trainer: Any) -> bool:
    """Whether a callback of ``trainer`` draws the plots of this evaluation (:class:`DrawsEvaluationPlots`)."""
    return any(isinstance(c, DrawsEvaluationPlots) for c in trainer.callbacks)
