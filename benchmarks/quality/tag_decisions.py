"""A decision rule tuned for macro-F1 on validation (post-hoc logit adjustment, Menon et al., 2021): a trained
tagger's class is ``argmax(log p - tau * log prior)``, the prior being each class's share of the training products,
with ``tau`` chosen per attribute on the validation split out of :data:`TAUS` (0 keeps the plain argmax). Macro-F1
weighs a class of 3 products as much as one of 1,000; the plain argmax rarely names the first."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from benchmarks.quality.scores import attribute_scores

TAUS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
LABEL = "val-tuned prior"  # the row's label: "<variant> [val-tuned prior]"


def probabilities(trainer: Any, model: Any, dm: Any, split: str, ckpt_path: str | None) -> tuple[list[str], dict]:
    """The ids and per-attribute probabilities ``(N, C_a)`` of ``model`` (the ``ckpt_path`` epoch) on ``split``."""
    ids: list[str] = []
    probs: dict[str, list[torch.Tensor]] = {}
    kept, dm.predict_split = dm.predict_split, split
    try:
        for out in trainer.predict(model, datamodule=dm, ckpt_path=ckpt_path):
            ids += list(out["ids"])
            for a, p in out["probs"].items():
                probs.setdefault(a, []).append(p)
    finally:
        dm.predict_split = kept
    return ids, {a: torch.cat(p).numpy() for a, p in probs.items() if not a.startswith("tags/")}


def train_label_counts(dm: Any, attributes: list[str]) -> dict[str, dict[str, int]]:
    """Per attribute, how many of the products the methods trained on hold each class (counted over the training
    split as ``--max-train`` cut it, not the manifest's)."""
    counts: dict[str, dict[str, int]] = {a: {} for a in attributes}
    for record in dm.splits["train"]:
        for a in attributes:
            if (label := record.labels.get(a)) is not None:
                counts[a][label] = counts[a].get(label, 0) + 1
    return counts


def log_prior(vocabulary: list[str], counts: dict[str, int]) -> np.ndarray:
    """Log of each class's share of the training products (a class never counted: one product)."""
    n = np.array([max(counts.get(v, 0), 1) for v in vocabulary], dtype=np.float64)
    return np.log(n / n.sum())


def decide(probs: np.ndarray, vocabulary: list[str], prior: np.ndarray, tau: float) -> list[str]:
    """The class of each row of ``probs`` under ``tau``."""
    return [vocabulary[i] for i in np.argmax(np.log(np.clip(probs, 1e-12, None)) - tau * prior, axis=1)]


def tune(
    val: tuple[list[str], dict[str, np.ndarray]], truth: dict[str, dict[str, str | None]],
    vocabularies: dict[str, list[str]], counts: dict[str, dict[str, int]],
) -> dict[str, dict[str, float]]:  # fmt: skip
    """Per attribute, the ``tau`` of :data:`TAUS` with the best validation macro-F1 (the smallest among equals), with
    that score and the plain argmax's: ``{attribute: {"tau", "val_macro_f1", "val_macro_f1_argmax"}}``."""
    ids, probs = val
    out = {}
    for a, p in probs.items():
        prior = log_prior(vocabularies[a], counts.get(a, {}))
        y = [truth[i][a] for i in ids]
        scores = [attribute_scores(y, decide(p, vocabularies[a], prior, tau))["macro_f1"] for tau in TAUS]
        best = int(np.argmax(scores))
        out[a] = {"tau": TAUS[best], "val_macro_f1": round(scores[best], 4), "val_macro_f1_argmax": round(scores[0], 4)}
    return out


def tuned_predictions(
    test: tuple[list[str], dict[str, np.ndarray]], chosen: dict[str, dict[str, float]],
    vocabularies: dict[str, list[str]], counts: dict[str, dict[str, int]],
) -> dict[str, dict[str, str]]:  # fmt: skip
    """The test products' classes under each attribute's tuned ``tau``: ``{id: {attribute: class}}``."""
    ids, probs = test
    decided = {a: decide(p, vocabularies[a], log_prior(vocabularies[a], counts.get(a, {})), chosen[a]["tau"])
               for a, p in probs.items()}  # fmt: skip
    return {i: {a: decided[a][k] for a in decided} for k, i in enumerate(ids)}


def val_tuned_row(
    val: tuple[list[str], dict[str, np.ndarray]], test: tuple[list[str], dict[str, np.ndarray]],
    vocabularies: dict[str, list[str]], counts: dict[str, dict[str, int]], dm: Any,
) -> tuple[dict[str, dict[str, str]], dict[str, Any]]:  # fmt: skip
    """The predictions and info of the ``[val-tuned prior]`` row of a trained tagger with these probabilities on the
    ``val`` and ``test`` products: ``tau`` tuned on the first, applied to the second."""
    chosen = tune(val, {r.id: r.labels for r in dm.splits["val"]}, vocabularies, counts)
    info = {
        "taus": chosen,
        "val_mean_macro_f1": round(float(np.mean([c["val_macro_f1"] for c in chosen.values()])), 4),
        "val_mean_macro_f1_argmax": round(float(np.mean([c["val_macro_f1_argmax"] for c in chosen.values()])), 4),
    }
    return tuned_predictions(test, chosen, vocabularies, counts), info
