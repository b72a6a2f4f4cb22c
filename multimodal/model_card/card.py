"""The model card as data (``model_card.json``) and its sections, read back and written safely.

The JSON is the source; ``MODEL_CARD.md`` is rendered from it (:mod:`multimodal.model_card.markdown`). Both carry a
mark of ours, so a run folder holding a file of the same name that someone else wrote is refused, never replaced.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from multimodal.errors import UserError
from multimodal.job_state import write_json_atomic
from multimodal.model_card.markdown import MD_MARK, render
from multimodal.model_card.report import ClassReport, CurveReport, EvaluationReport

CARD_JSON = "model_card.json"
CARD_MD = "MODEL_CARD.md"
FORMAT = "multimodal-model-card"
CLASSES_SHOWN = 10  # per-class F1 of the most frequent and of the worst classes
SKIPPED_SHOWN = 10  # skipped products listed by id, row and reason (all are counted)


def new_card(task: str, settings: dict[str, Any]) -> dict[str, Any]:
    """An empty card of a ``task`` trained with ``settings`` (the resolved config stored with its checkpoints)."""
    return {"format": FORMAT, "version": 1, "task": task, "data": None, "training": {}, "settings": settings,
            "evaluations": {}}  # fmt: skip


def read_card(folder: Path) -> dict[str, Any] | None:
    """The card of ours in ``folder``, None if there is none; a one-line error if ``MODEL_CARD.md`` or
    ``model_card.json`` is there but was not written by us (it is never replaced)."""
    md, js = folder / CARD_MD, folder / CARD_JSON
    if md.exists():
        with md.open(encoding="utf-8", errors="replace") as f:
            if not f.readline().startswith(MD_MARK):
                raise UserError(f"{md} exists and was not written by multimodal: move it away, it is not replaced")
    if not js.exists():
        return None
    try:
        card = json.loads(js.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        card = None
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise UserError(f"{js} exists and is not a model card of multimodal: move it away, it is not replaced")
    return card


def write_card(folder: Path, card: dict[str, Any], command: str) -> None:
    """Write ``card`` as ``model_card.json`` and ``MODEL_CARD.md`` (each to a temporary sibling, then renamed)."""
    card["updated"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    card["updated_by"] = command
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / CARD_JSON, card)
    tmp = folder / f".{CARD_MD}.{os.getpid()}.tmp"
    tmp.write_text(render(card), encoding="utf-8")
    os.replace(tmp, folder / CARD_MD)


def sha256_of(path: Path | str) -> str | None:
    """The SHA-256 of a local file; None for a URL or a folder (a stream), which are not hashed."""
    p = Path(path)
    if "://" in str(path) or not p.is_file():
        return None
    digest = hashlib.sha256()
    with p.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_section(report: Mapping[str, Any], sha256: str | None) -> dict[str, Any]:
    """The data a run read, from a data module's report (``manifest``, ``rows`` per split, ``skipped`` products,
    ``skipped_photos``, ``unseen_labels``): the manifest and its hash, counts per split, what was skipped and the
    val / test labels never seen in training (masked out of the metrics)."""
    skipped = list(report.get("skipped") or [])
    return {
        "manifest": str(report.get("manifest")),
        "sha256": sha256,
        "rows": dict(report.get("rows") or {}),
        "skipped_products": len(skipped),
        "skipped_photos": len(report.get("skipped_photos") or []),
        "skipped_examples": skipped[:SKIPPED_SHOWN],
        "unseen_labels": dict(report.get("unseen_labels") or {}),
    }


def relative(path: str | Path | None, folder: Path) -> str | None:
    """``path`` relative to ``folder`` when it is inside it (the card moves with its folder), else as given."""
    if not path:
        return None
    try:
        return Path(path).resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:
        return str(path)


def split_scores(metrics: Mapping[str, float], prefix: str) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """The scalars a stage logged, ``{prefix}/{name}`` and ``{prefix}/{group}/{name}``: ``(overall, per group)``
    (a group is an attribute, a tag column...: whatever the task logs under a second level)."""
    overall: dict[str, float] = {}
    groups: dict[str, dict[str, float]] = {}
    for key in sorted(metrics, key=_natural):
        if not key.startswith(f"{prefix}/"):
            continue
        rest = key[len(prefix) + 1 :]
        group, _, name = rest.rpartition("/")
        if group:
            groups.setdefault(group, {})[name] = float(metrics[key])
        else:
            overall[name] = float(metrics[key])
    return overall, groups


def _natural(key: str) -> list[Any]:
    """Sort key that puts ``recall@5`` before ``recall@10``."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", key)]


def class_summary(report: ClassReport, n: int = CLASSES_SHOWN) -> dict[str, Any]:
    """Calibration and the per-class F1 of the ``n`` most frequent and the ``n`` worst classes."""

    def rows(indices: list[int]) -> list[dict[str, Any]]:
        return [{"class": report.labels[i], "support": report.support[i], "f1": report.f1[i]} for i in indices]

    return {
        "classes": len(report.labels),
        "ece": report.ece,
        "most_frequent": rows(report.most_frequent(n)),
        "worst": rows(report.worst(n)),
    }


def curve_summary(curve: CurveReport) -> dict[str, Any]:
    return {"title": curve.title, "x_label": curve.x_label, "x": curve.x, "series": curve.series}


def evaluation_results(
    metrics: Mapping[str, float], prefix: str, report: EvaluationReport, plots: Mapping[str, list[str]]
) -> dict[str, Any]:
    """What an evaluation adds to its entry: logged scores, per-class summaries, curves, links to the plots."""
    overall, groups = split_scores(metrics, prefix)
    return {
        "scores": overall,
        "groups": groups,
        "classes": {c.name: class_summary(c) for c in report.classes},
        "curves": {c.name: curve_summary(c) for c in report.curves},
        "plots": dict(plots),
    }
