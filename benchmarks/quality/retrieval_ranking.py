"""Ranking metrics of a search over a whole gallery, expected over a random order of tied products (BM25 and RRF
give many products the same score) and with the products a search did not return (score ``-inf``) never found.

Recall@k, precision@k, reciprocal rank of the first answer and nDCG@k (linear gains, the ideal DCG from the whole
gallery's gains) of one query from its scores ``(N,)`` and gains ``(N,)``; a vectorised path for queries with one
answer gives the same numbers.
"""

from __future__ import annotations

import numpy as np


def _groups(scores: np.ndarray, gains: np.ndarray) -> tuple[np.ndarray, ...]:
    """The returned products' tie groups, best first: (products above, size, summed gain, answers) of each."""
    found = np.isfinite(scores)
    order = np.argsort(-scores[found], kind="stable")
    s, g = scores[found][order], gains[found][order]
    if not len(s):
        empty = np.zeros(0)
        return empty, empty, empty, empty
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    sizes = np.diff(np.r_[starts, len(s)])
    return starts, sizes, np.add.reduceat(g, starts), np.add.reduceat((g > 0).astype(np.float64), starts)


def first_answer_rr(above: int, size: int, answers: int) -> float:
    """Expected 1 / rank of the first answer of a tie group of ``size`` products, ``answers`` of them answers, with
    ``above`` products ranked above it: the first answer's place X in the group has P(X >= j + 1) / P(X >= j) =
    (size - j + 1 - answers) / (size - j + 1)."""
    j = np.arange(1, size - answers + 1)
    survival = np.r_[1.0, np.cumprod((size - j + 1 - answers) / (size - j + 1))]  # P(X >= j), j = 1..size-answers+1
    p = survival - np.r_[survival[1:], 0.0]
    return float((p / (above + np.arange(1, len(p) + 1))).sum())


def discounts(k: int) -> np.ndarray:
    """Cumulative DCG discounts ``(k + 1,)``: entry m is the sum of 1 / log2(p + 1) for p = 1..m."""
    return np.r_[0.0, np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))]


def ranked_metrics(scores: np.ndarray, gains: np.ndarray, ks: tuple[int, ...] = (1, 10)) -> dict[str, float]:
    """recall@k, precision@k, ``mrr`` (reciprocal rank of the first answer) and nDCG@k of one query.

    Args:
        scores: the search's score of every gallery product ``(N,)``; ``-inf``: not returned.
        gains: every product's relevance ``(N,)`` (0: not an answer).
        ks: the cut-offs.
    """
    above, sizes, group_gain, group_answers = _groups(scores, gains)
    total_answers = float((gains > 0).sum())
    out: dict[str, float] = {}
    ideal = np.sort(gains)[::-1]
    for k in ks:
        found = float((group_answers * np.clip((k - above) / np.maximum(sizes, 1), 0.0, 1.0)).sum())
        out[f"recall@{k}"] = found / total_answers if total_answers else 0.0
        out[f"precision@{k}"] = found / k
        cum = discounts(k)
        within = cum[np.minimum(above + sizes, k).astype(int)] - cum[np.minimum(above, k).astype(int)]
        dcg = float((group_gain * within / np.maximum(sizes, 1)).sum())  # a tie group's mean discount in the top k
        idcg = float((ideal[:k] * np.diff(cum)[: len(ideal[:k])]).sum())
        out[f"ndcg@{k}"] = dcg / idcg if idcg > 0 else 0.0
    hit = np.flatnonzero(group_answers > 0)
    out["mrr"] = (
        first_answer_rr(int(above[hit[0]]), int(sizes[hit[0]]), int(group_answers[hit[0]])) if len(hit) else 0.0
    )
    return out


def item_metrics(scores: np.ndarray, answers: np.ndarray, ks: tuple[int, ...] = (1, 10)) -> dict[str, np.ndarray]:
    """recall@k and ``mrr`` of queries with one answer each, per query.

    Args:
        scores: ``(Q, N)`` scores of the gallery; ``-inf``: not returned.
        answers: ``(Q,)`` each query's answer row.
    """
    own = scores[np.arange(len(answers)), answers][:, None]  # (Q, 1)
    found = np.isfinite(own[:, 0])
    above = (scores > own).sum(axis=1)
    ties = np.maximum((scores == own).sum(axis=1), 1)
    out = {f"recall@{k}": np.where(found, np.clip((k - above) / ties, 0.0, 1.0), 0.0) for k in ks}
    harmonic = np.r_[0.0, np.cumsum(1.0 / np.arange(1, scores.shape[1] + 1))]  # H(m) = 1 + 1/2 + ... + 1/m
    out["mrr"] = np.where(found, (harmonic[above + ties] - harmonic[above]) / ties, 0.0)
    return out
