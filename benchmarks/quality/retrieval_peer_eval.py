"""Retrieval quality over the whole catalogue as the gallery (every product of every split), as the peers publish
search quality: BM25 (the search's ``LexicalIndex`` over every title), dense search with a trained retriever, and
the hybrid fusions of the two (the search's own functions over each list's top ``HYBRID_DEPTH``), each scored on
every query set of :mod:`benchmarks.quality.retrieval_queries`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from benchmarks.quality.retrieval_data import Encoded, batch_of
from benchmarks.quality.retrieval_default_hybrid import ranked, tune
from benchmarks.quality.retrieval_queries import QuerySet
from benchmarks.quality.retrieval_ranking import item_metrics, ranked_metrics
from multimodal.search.hits import HYBRID_DEPTH
from multimodal.search.query import route_of
from multimodal.search.retriever import ProductRetriever
from multimodal.search.shopper_queries import ShopperQuery

BM25 = "BM25 on the title"
CHUNK = 256  # queries (and gallery products) scored at a time: a (CHUNK, N) score matrix
Lists = list[tuple[np.ndarray, np.ndarray]]  # each query's BM25 top list: (scores, product rows)


def set_metrics(s: QuerySet, scores: np.ndarray, start: int) -> dict[str, np.ndarray]:
    """Per-query metrics of the queries ``start..`` of ``s`` from their scores ``(q, N)`` (``-inf``: not returned)."""
    if s.kind == "item":
        answers = np.array([int(r[0]) for r in s.relevant[start : start + len(scores)]])
        return item_metrics(scores, answers)
    n = scores.shape[1]
    rows = [ranked_metrics(scores[i], s.gains(start + i, n)) for i in range(len(scores))]
    return {m: np.array([r[m] for r in rows]) for m in s.metrics}


def mean_of(parts: list[dict[str, np.ndarray]], metrics: tuple[str, ...]) -> dict[str, float]:
    return {m: float(np.concatenate([p[m] for p in parts]).mean()) if parts else 0.0 for m in metrics}


def as_scores(hits: list[tuple[int, float]], n: int) -> np.ndarray:
    """A fused hit list as a gallery score vector ``(N,)``: products it does not hold are not returned."""
    out = np.full(n, -np.inf)
    if hits:
        rows, scores = zip(*hits, strict=True)
        out[list(rows)] = scores
    return out


class Gallery:
    """The whole catalogue searched by each query set: BM25 scored once at construction (it has no seed), its top
    lists kept for the hybrid fusions of each trained retriever (:meth:`score`).

    Args:
        data: the encoded catalogue (every split, in row order) with the query sets' texts cached.
        sets: the query sets.
        tuning: the queries each retriever's hybrid default is tuned on and the words that route a query
            (:func:`benchmarks.quality.retrieval_default_hybrid.tuning_queries`).
    """

    def __init__(self, data: Encoded, sets: list[QuerySet], tuning: tuple[list[ShopperQuery], set[str]]) -> None:
        import pandas as pd

        from multimodal.search.lexical import LexicalIndex

        self.data, self.sets, self.tuning = data, sets, tuning
        self.lexical = LexicalIndex.build(pd.DataFrame({"title": data.titles}), ["title"])
        self.lists: dict[str, Lists] = {}
        self.bm25: dict[str, dict[str, float]] = {}
        for s in sets:
            self.lists[s.name], self.bm25[s.name] = self._lexical(s)

    def _lexical(self, s: QuerySet) -> tuple[Lists, dict[str, float]]:
        n, lists, parts = self.data.n, [], []
        for start in range(0, len(s.texts), CHUNK):
            scores, rows = self.lexical.search(s.texts[start : start + CHUNK], n)
            full = np.full((len(rows), n), -np.inf)
            for i, (rr, ss) in enumerate(zip(rows, scores, strict=True)):
                keep = rr >= 0
                full[i, rr[keep]] = ss[keep]
                lists.append((ss[keep][:HYBRID_DEPTH], rr[keep][:HYBRID_DEPTH]))
            parts.append(set_metrics(s, full, start))
        return lists, mean_of(parts, s.metrics)

    @torch.inference_mode()
    def vectors(self, model: ProductRetriever) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The gallery's product vectors ``(N, E)`` and each query set's query vectors ``(Q, E)``."""
        model.eval()
        n, ids = self.data.n, self.data.ids
        gallery = [
            model.embed_products(batch_of(list(range(a, min(a + CHUNK, n))), n, ids)) for a in range(0, n, CHUNK)
        ]
        queries = {}
        for s in self.sets:
            idx = torch.tensor(s.text_rows, dtype=torch.long)[:, None]
            queries[s.name] = model.embed_text(idx, torch.ones_like(idx)).numpy()
        return torch.cat(gallery).numpy(), queries

    def score(
        self, model: ProductRetriever, weight: float
    ) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, Any]]:
        """Dense search with ``model``, its RRF and weighted (dense share ``weight``) fusions with BM25, and the
        hybrid default an index build would tune on the tuning queries: ``({"dense" | "hybrid RRF" | "hybrid weighted" |
        "hybrid default": {query set: {metric: mean}}}, the default's tuning record)``."""
        gallery, queries = self.vectors(model)
        default = tune(self.data, model, gallery, self.lexical, self.tuning)
        systems = {"hybrid RRF": {"mode": "hybrid", "fusion": "rrf"},
                   "hybrid weighted": {"mode": "hybrid", "fusion": "weighted", "weight": weight},
                   "hybrid default": default}  # fmt: skip
        out: dict[str, dict[str, dict[str, float]]] = {"dense": {}, **{k: {} for k in systems}}
        for s in self.sets:
            parts: dict[str, list[dict[str, np.ndarray]]] = {k: [] for k in out}
            for start in range(0, len(s.texts), CHUNK):
                sim = queries[s.name][start : start + CHUNK] @ gallery.T  # (q, N)
                parts["dense"].append(set_metrics(s, sim, start))
                fused = {k: np.empty_like(sim, dtype=np.float64) for k in systems}
                for i in range(len(sim)):
                    top, lex = np.argsort(-sim[i], kind="stable")[:HYBRID_DEPTH], self.lists[s.name][start + i]
                    for k, options in systems.items():
                        if k == "hybrid default":  # the route of the query's text, as `multimodal search` takes it
                            options = route_of(default, s.texts[start + i], self.lexical.vocabulary)
                        fused[k][i] = as_scores(ranked(options, sim[i], top, lex), self.data.n)
                for k in systems:
                    parts[k].append(set_metrics(s, fused[k], start))
            for system, p in parts.items():
                out[system][s.name] = mean_of(p, s.metrics)
        return out, default
