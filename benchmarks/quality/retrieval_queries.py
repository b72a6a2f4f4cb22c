"""Retrieval quality's query sets over the whole catalogue, as the peers publish search quality: a test product's
title or shopper words (one answer), a category or colour value as a shopper types it (every product with that
value is an answer), and attribute combinations such as "women blue jeans" (graded: a product is as relevant as the
number of the query's attributes it matches)."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
from collections import Counter
from typing import Any, Literal

import numpy as np

QueryKind = Literal["item", "set", "graded"]
METRICS: dict[str, tuple[str, ...]] = {
    "item": ("recall@1", "recall@10", "mrr"),
    "set": ("precision@1", "precision@10", "mrr"),
    "graded": ("ndcg@10",),
}
HEADLINE = {"item": "recall@1", "set": "precision@1", "graded": "ndcg@10"}


@dataclasses.dataclass
class QuerySet:
    """Queries of one kind and their answers among the gallery's product rows.

    Attributes:
        name: what the queries are (``title``, a column name, ``attribute combinations``).
        kind: ``item`` (one answer a query), ``set`` (every product with the value) or ``graded``.
        texts: the queries as typed.
        text_rows: each query's row in the cached text features.
        relevant: each query's answers, product rows ``(R,)``.
        grades: each answer's relevance ``(R,)`` (1 for ``item`` and ``set``).
    """

    name: str
    kind: QueryKind
    texts: list[str]
    text_rows: list[int]
    relevant: list[np.ndarray]
    grades: list[np.ndarray]

    @property
    def metrics(self) -> tuple[str, ...]:
        return METRICS[self.kind]

    def gains(self, q: int, n: int) -> np.ndarray:
        """Query ``q``'s relevance of every gallery product ``(N,)`` (0: not an answer)."""
        out = np.zeros(n, dtype=np.float64)
        out[self.relevant[q]] = self.grades[q]
        return out

    def summary(self) -> dict[str, Any]:
        answers = [len(r) for r in self.relevant]
        return {"kind": self.kind, "queries": len(self.texts), "examples": self.texts[:5],
                "answers_per_query": {"min": min(answers, default=0), "max": max(answers, default=0)}}  # fmt: skip


def typed(value: str | None) -> str:
    """A value as a shopper types it: lowercased, spaces trimmed ('' when missing)."""
    return (value or "").strip().lower()


def item_set(name: str, texts: list[str], text_rows: list[int], answers: list[int]) -> QuerySet:
    one = np.ones(1)
    return QuerySet(name, "item", texts, text_rows, [np.array([a]) for a in answers], [one] * len(answers))


def value_set(name: str, values: list[str], offset: int) -> QuerySet:
    """One query per distinct value of a column (``values``: each gallery product's, typed); its answers are the
    products with that value."""
    column = np.array(values, dtype=object)
    texts = sorted({v for v in values if v})
    relevant = [np.flatnonzero(column == t) for t in texts]
    return QuerySet(name, "set", texts, list(range(offset, offset + len(texts))), relevant,
                    [np.ones(len(r)) for r in relevant])  # fmt: skip


def combination_set(values: list[list[str]], count: int, seed: int, offset: int) -> QuerySet:
    """``count`` attribute combinations of 2 or 3 columns that some product has, drawn with ``seed`` as often as
    products have them (a frequent "men black tshirts" is drawn before a rare one); the values joined in column
    order. ``values``: each gallery product's value of each column, typed."""
    width = len(values[0]) if values else 0
    patterns = [p for size in (2, 3) if size <= width for p in itertools.combinations(range(width), size)]
    counts: Counter[tuple[tuple[int, str], ...]] = Counter()
    for row in values:
        for p in patterns:
            if all(row[i] for i in p):
                counts[tuple((i, row[i]) for i in p)] += 1
    combos = sorted(counts)
    if not combos:
        return QuerySet("attribute combinations", "graded", [], [], [], [])
    weights = np.array([counts[c] for c in combos], dtype=np.float64)
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(combos), size=min(count, len(combos)), replace=False, p=weights / weights.sum())
    table = np.array(values, dtype=object).reshape(len(values), width)
    texts, relevant, grades = [], [], []
    for c in sorted(picked.tolist()):
        combo = combos[c]
        matched = sum((table[:, i] == v).astype(np.int64) for i, v in combo)
        texts.append(" ".join(v for _, v in combo))
        relevant.append(np.flatnonzero(matched))
        grades.append(matched[relevant[-1]].astype(np.float64))
    return QuerySet("attribute combinations", "graded", texts, list(range(offset, offset + len(texts))), relevant,
                    grades)  # fmt: skip


def query_sets(
    records: list[Any], test_rows: list[int], titles: list[str], shopper: list[str], args: argparse.Namespace
) -> tuple[list[QuerySet], list[str]]:
    """The whole-catalogue query sets and the texts they add to the cached text rows (titles 0.., product texts
    n.., shopper queries 2n.., these from 3n on).

    Args:
        records: the gallery, every product of every split, in row order.
        test_rows: the test products (their titles and shopper words are the per-product queries).
        titles: every product's title; shopper: every product's shopper query.
        args: ``--category-columns``, ``--colour-column``, ``--combination-columns``, ``--combinations``,
            ``--seed``.
    """
    n = len(records)
    sets = [
        item_set("title", [titles[r] for r in test_rows], list(test_rows), list(test_rows)),
        item_set(
            "shopper (3 title words)", [shopper[r] for r in test_rows], [2 * n + r for r in test_rows], list(test_rows)
        ),  # fmt: skip
    ]
    offset = 3 * n
    for column in [*args.category_columns, args.colour_column]:
        sets.append(value_set(column, [typed(r.texts[column]) for r in records], offset))
        offset += len(sets[-1].texts)
    if args.combinations and len(args.combination_columns) >= 2:
        rows = [[typed(r.texts[c]) for c in args.combination_columns] for r in records]
        sets.append(combination_set(rows, args.combinations, args.seed, offset))
    sets = [s for s in sets if s.texts]  # a column with no value, a split with no product: no query to score
    return sets, [t for s in sets if s.kind != "item" for t in s.texts]
