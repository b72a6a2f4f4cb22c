"""Scores every tagging method is measured with: accuracy and macro-F1 per attribute, their means, a paired
bootstrap of two methods' difference, and the markdown table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def attribute_scores(y_true: Sequence[str | None], y_pred: Sequence[str]) -> dict[str, float | int]:
    """Accuracy and macro-F1 of one attribute, computed the same way for every method.

    Items whose true label is unknown (None: empty, NA or null in the manifest) are left out. Macro-F1 is
    ``sklearn.metrics.f1_score(average="macro")`` over the labels present in ``y_true`` or ``y_pred``
    (``zero_division=0``), so a class that neither occurs nor is predicted in the test split does not count.
    A true label never seen in training stays in (no method can predict it; it counts against all alike).
    """
    from sklearn.metrics import accuracy_score, f1_score

    pairs = [(t, p) for t, p in zip(y_true, y_pred, strict=True) if t is not None]
    if not pairs:
        return {"n": 0, "acc": float("nan"), "macro_f1": float("nan")}
    t, p = zip(*pairs, strict=True)
    labels = sorted(set(t) | set(p))
    return {
        "n": len(pairs),
        "acc": float(accuracy_score(t, p)),
        "macro_f1": float(f1_score(t, p, labels=labels, average="macro", zero_division=0)),
    }


def score_table(
    truth: dict[str, list[str | None]], predictions: dict[str, list[str]], attributes: Sequence[str]
) -> dict[str, Any]:
    """Per-attribute scores plus the mean accuracy and mean macro-F1 over ``attributes``."""
    per = {a: attribute_scores(truth[a], predictions[a]) for a in attributes}
    return {
        "per_attribute": per,
        "mean_acc": float(np.mean([per[a]["acc"] for a in attributes])),
        "mean_macro_f1": float(np.mean([per[a]["macro_f1"] for a in attributes])),
    }


RARE_BELOW = 20  # a class with fewer training products than this is rare


def rare_class_f1(
    truth: dict[str, list[str | None]], predictions: dict[str, list[str]], attributes: Sequence[str],
    train_counts: dict[str, dict[str, int]], below: int = RARE_BELOW,
) -> dict[str, Any]:  # fmt: skip
    """F1 of the rare classes: every (attribute, class) that occurs among the test products' true labels and has
    fewer than ``below`` training products, scored as :func:`attribute_scores` scores each class (sklearn's F1,
    ``zero_division=0``); their mean, how many there are, and each one's F1 (``"attribute=class"``)."""
    from sklearn.metrics import f1_score

    per_class: dict[str, float] = {}
    for a in attributes:
        pairs = [(t, p) for t, p in zip(truth[a], predictions[a], strict=True) if t is not None]
        rare = sorted({t for t, _ in pairs if train_counts.get(a, {}).get(t, 0) < below})
        if rare:
            t, p = zip(*pairs, strict=True)
            f1 = f1_score(t, p, labels=rare, average=None, zero_division=0)
            per_class.update({f"{a}={c}": float(x) for c, x in zip(rare, f1, strict=True)})
    mean = float(np.mean(list(per_class.values()))) if per_class else float("nan")
    return {"mean_f1": mean, "classes": len(per_class), "below": below, "per_class": per_class}


def paired_bootstrap(
    truth: dict[str, list[str | None]],
    predictions_a: dict[str, list[str]] | Sequence[dict[str, list[str]]],
    predictions_b: dict[str, list[str]],
    attributes: Sequence[str],
    samples: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """Paired bootstrap of ``mean macro-F1(a) - mean macro-F1(b)`` over the test products.

    Each of ``samples`` draws resamples the products with replacement, once for both methods, and scores both
    exactly as :func:`attribute_scores` does (unknown true labels left out; macro over the labels present in the
    draw's truth or predictions). ``predictions_a`` may be several prediction sets (runs of one method with other
    seeds): ``a``'s score is then their average on the same draw. Returns the observed difference, the 2.5 / 97.5
    percentiles of the drawn differences and the share of draws in which ``a`` is ahead.
    """
    runs_a = [predictions_a] if isinstance(predictions_a, dict) else list(predictions_a)
    n = len(truth[attributes[0]])
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(samples, n))
    diff = np.zeros(samples)
    observed = 0.0
    for a in attributes:
        predicted = set(predictions_b[a]).union(*(set(r[a]) for r in runs_a))
        labels = sorted({x for x in truth[a] if x is not None} | predicted)
        code = {label: i for i, label in enumerate(labels)}
        known = np.array([x is not None for x in truth[a]])
        t = np.array([code[x] if x is not None else -1 for x in truth[a]])
        drawn, whole = [], []
        for preds in (*runs_a, predictions_b):
            p = np.array([code[x] for x in preds[a]])
            drawn.append(_macro_f1_draws(t, p, known, draws, len(labels)))
            whole.append(_macro_f1_draws(t, p, known, np.arange(n)[None], len(labels))[0])
        diff += np.mean(drawn[:-1], axis=0) - drawn[-1]
        observed += float(np.mean(whole[:-1])) - whole[-1]
    k = len(attributes)
    diff, observed = diff / k, observed / k
    return {
        "diff": float(observed),
        "ci95_low": float(np.percentile(diff, 2.5)),
        "ci95_high": float(np.percentile(diff, 97.5)),
        "share_ahead": float((diff > 0).mean()),
        "samples": samples,
    }


def _macro_f1_draws(t: np.ndarray, p: np.ndarray, known: np.ndarray, draws: np.ndarray, k: int) -> np.ndarray:
    """Macro-F1 per draw (rows of product indices): ``2 tp / (true + predicted)`` per class, over classes seen."""
    out = np.empty(len(draws))
    for i, idx in enumerate(draws):
        idx = idx[known[idx]]
        ti, pi = t[idx], p[idx]
        true_n, pred_n = np.bincount(ti, minlength=k), np.bincount(pi, minlength=k)
        tp = np.bincount(ti[ti == pi], minlength=k)
        seen = (true_n + pred_n) > 0
        out[i] = (2 * tp[seen] / (true_n[seen] + pred_n[seen])).mean() if seen.any() else np.nan
    return out


def format_table(results: dict[str, dict[str, Any]], attributes: Sequence[str]) -> str:
    """Markdown table: one row per method, ``acc / macro-F1`` per attribute, then the mean macro-F1."""
    head = "| method | " + " | ".join(f"{a} acc / F1" for a in attributes) + " | mean acc | **mean macro-F1** |"
    rule = "|---|" + "---|" * (len(attributes) + 2)
    rows = [head, rule]
    for name, res in results.items():
        cells = [
            f"{res['per_attribute'][a]['acc']:.3f} / {res['per_attribute'][a]['macro_f1']:.3f}" for a in attributes
        ]
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {res['mean_acc']:.3f} | **{res['mean_macro_f1']:.3f}** |")
    return "\n".join(rows)
