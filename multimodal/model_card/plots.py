"""The model card's plots, drawn from an :class:`EvaluationReport`: a confusion matrix people can read, per-class F1
bars, a reliability diagram and score-at-cut-off curves (recall@K).

Figures are built with ``matplotlib.figure.Figure`` (no pyplot): nothing global changes, whatever backend the user's
session has, and a figure is freed when it goes out of scope.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from multimodal.model_card.report import ClassReport, CurveReport, EvaluationReport

SOFTWARE = "multimodal model card"  # written into every PNG: a plot of ours is known by it
CONFUSION_CLASSES = 15  # the most frequent classes shown; the others are folded into "other"
BAR_CLASSES = 10  # classes per panel of the F1 bars (most frequent, worst)
LABEL_CHARS = 28


def draw(report: EvaluationReport, folder: Path) -> dict[str, list[Path]]:
    """Every plot of ``report`` as PNG files in ``folder``: ``{attribute or curve name: [paths]}``."""
    folder.mkdir(parents=True, exist_ok=True)
    drawn: dict[str, list[Path]] = {}
    for c in report.classes:
        stem = file_name(c.name)
        drawn[c.name] = [
            confusion_plot(c, folder / f"{stem}-confusion.png"),
            f1_bars(c, folder / f"{stem}-f1.png"),
            reliability_plot(c, folder / f"{stem}-reliability.png"),
        ]
    for curve in report.curves:
        drawn[curve.name] = [curve_plot(curve, folder / f"{file_name(curve.name)}.png")]
    return drawn


def file_name(name: str) -> str:
    """``name`` (a column name from the config) as a safe file name."""
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "unnamed"


def folded_confusion(report: ClassReport, top: int = CONFUSION_CLASSES) -> tuple[list[str], list[list[int]]]:
    """The confusion counts of the ``top`` most frequent classes, every other class folded into one ``other`` row
    and column (so no prediction is lost from a row): ``(labels, counts)``."""
    keep = report.most_frequent(top)
    n = len(report.labels)
    folded = len(keep) < n
    slot = {c: i for i, c in enumerate(keep)}
    size = len(keep) + int(folded)
    counts = [[0] * size for _ in range(size)]
    for t in range(n):
        for p in range(n):
            value = report.confusion[t][p]
            if value and (t in slot or folded) and (p in slot or folded):
                counts[slot.get(t, size - 1)][slot.get(p, size - 1)] += value
    labels = [report.labels[c] for c in keep] + (["other"] if folded else [])
    return labels, counts


def confusion_plot(report: ClassReport, path: Path, top: int = CONFUSION_CLASSES) -> Path:
    """Row-normalised confusion matrix of the most frequent classes, each cell's share written in it."""
    from matplotlib.figure import Figure

    labels, counts = folded_confusion(report, top)
    rows = [sum(r) for r in counts]
    shares = [[v / rows[i] if rows[i] else 0.0 for v in r] for i, r in enumerate(counts)]
    side = 3.0 + 0.45 * len(labels)
    fig = Figure(figsize=(side + 1.5, side))
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    font = 9 if len(labels) <= 10 else 7
    for i, row in enumerate(shares):
        for j, share in enumerate(row):
            if counts[i][j]:
                color = "white" if share > 0.6 else "black"
                text = f"{share:.2f}" if share >= 0.005 else "<.01"
                ax.text(j, i, text, ha="center", va="center", fontsize=font, color=color)
    ticks = range(len(labels))
    ax.set_xticks(ticks, [_short(x) for x in labels], rotation=45, ha="right", fontsize=font + 1)
    ax.set_yticks(ticks, [f"{_short(x)} (n={n})" for x, n in zip(labels, rows, strict=True)], fontsize=font + 1)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (test examples)")
    kept = len(report.most_frequent(top))
    others = len(report.labels) - kept
    shown = f"; the other {others} folded into 'other'" if others else ""
    ax.set_title(f"{report.name}: share of each true class predicted as each class\n({kept} most frequent{shown})")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return _save(fig, path)


def f1_bars(report: ClassReport, path: Path, n: int = BAR_CLASSES) -> Path:
    """F1 of the most frequent classes and of the worst classes, side by side, with each class's support (one
    panel when both are every class)."""
    from matplotlib.figure import Figure

    panels = [("most frequent classes", report.most_frequent(n)), ("worst classes by F1", report.worst(n))]
    if set(panels[0][1]) == set(panels[1][1]):
        panels = [("every class with test examples", panels[0][1])]
    height = 1.5 + 0.32 * max(len(p) for _, p in panels)
    fig = Figure(figsize=(6 * len(panels), height))
    for ax, (title, chosen) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        names = [f"{_short(report.labels[i])} (n={report.support[i]})" for i in chosen]
        values = [report.f1[i] for i in chosen]
        bars = ax.barh(range(len(chosen)), values, color="tab:blue")
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], padding=2, fontsize=8)
        ax.set_yticks(range(len(chosen)), names, fontsize=8)
        ax.invert_yaxis()  # the first class on top
        ax.set_xlim(0, 1.1)
        ax.set_xlabel("F1")
        ax.set_title(f"{report.name}: {title}")
    fig.tight_layout()
    return _save(fig, path)


def reliability_plot(report: ClassReport, path: Path) -> Path:
    """Accuracy per confidence bin against the diagonal of perfect calibration, and how many predictions fall in
    each bin."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 6.5))
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    width = 1.0 / max(len(report.bins), 1)
    lefts = [i * width for i in range(len(report.bins))]
    used = [(x, b) for x, b in zip(lefts, report.bins, strict=True) if b[2] > 0]
    top.bar([x for x, _ in used], [b[1] for _, b in used], width=width, align="edge", edgecolor="black",
            color="tab:blue", label="accuracy in the bin")  # fmt: skip
    top.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfectly calibrated")
    top.scatter([x + width / 2 for x, _ in used], [b[0] for _, b in used], color="tab:orange", zorder=3, s=16,
                label="mean confidence in the bin")  # fmt: skip
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(f"{report.name}: reliability (ECE {report.ece:.3f})")
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(lefts, [b[2] for b in report.bins], width=width, align="edge", color="gray")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("confidence of the top class")
    bottom.set_ylabel("predictions")
    fig.tight_layout()
    return _save(fig, path)


def curve_plot(curve: CurveReport, path: Path) -> Path:
    """One line per series of ``curve`` (e.g. recall@K in both search directions)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for name, values in curve.series.items():
        ax.plot(curve.x, values, marker="o", markersize=3, label=name)
    if curve.x and curve.x[-1] > 20:  # log K, ticks at the cut-offs people quote
        ax.set_xscale("log")
        ticks = [k for k in curve.x if k in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)]
        ax.set_xticks(ticks, [str(k) for k in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(curve.x_label)
    ax.set_ylabel("share of queries")
    ax.set_title(curve.title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def _short(label: Any) -> str:
    text = str(label)
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"


def _save(fig: Any, path: Path) -> Path:
    """Write ``fig`` as PNG to a temporary sibling, then rename (a reader never sees half a plot)."""
    import os

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight", metadata={"Software": SOFTWARE})
    os.replace(tmp, path)
    return path
