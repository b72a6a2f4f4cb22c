"""Lexical search (BM25 through ``bm25s``) over chosen text columns, and the fusion of ranked candidate lists.

Exact words (brands, model numbers such as "air max 90") win a lexical match where a 256-d embedding blurs them;
hybrid search joins the two ranked lists, by reciprocal-rank fusion (RRF, the default: scale-free, Cormack et al.
2009, as Marqo, Qdrant and LanceDB do) or by a weighted sum of min-max normalised scores.

The BM25 index is a folder of ``bm25s`` arrays kept inside the search index (``lexical/``) with the columns it was
built from; it is rebuilt from the products table after a live update (BM25's IDF changes with every product, and
rebuilding is seconds for a million titles).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from multimodal.errors import UserError

TOKEN_PATTERN = r"(?u)\b\w+\b"  # keep one-character tokens: sizes and model numbers ("5", "x")
RRF_K = 60  # the constant of reciprocal-rank fusion (the value of the original paper and most engines)


def _tokenize(texts: list[str]) -> list[list[str]]:
    import bm25s

    return bm25s.tokenize(texts, token_pattern=TOKEN_PATTERN, stopwords="en", return_ids=False, show_progress=False)


def product_texts(products: pd.DataFrame, columns: list[str]) -> list[str]:
    """The text BM25 indexes for each product: its ``columns`` joined (missing values left out)."""
    missing = [c for c in columns if c not in products.columns]
    if missing:
        known = [c for c in products.columns if not c.startswith("_")]
        raise UserError(f"--lexical: column(s) {missing} are not in the export (it stores: {', '.join(known)})")
    parts = products[columns].astype(object).where(products[columns].notna(), "")
    return [" ".join(str(v) for v in row if v != "") for row in parts.itertuples(index=False, name=None)]


class LexicalIndex:
    """BM25 over one text per product row (row order = the products table's)."""

    def __init__(self, retriever: Any, columns: list[str]) -> None:
        self.retriever, self.columns = retriever, columns

    @classmethod
    def build(cls, products: pd.DataFrame, columns: list[str]) -> LexicalIndex:
        import bm25s

        retriever = bm25s.BM25()
        retriever.index(_tokenize(product_texts(products, columns)), show_progress=False)
        return cls(retriever, columns)

    @property
    def count(self) -> int:
        return int(self.retriever.scores["num_docs"])

    @functools.cached_property
    def vocabulary(self) -> frozenset[str]:
        """Every word some product's text holds, as BM25 reads it (lower case, stop words left out)."""
        return frozenset(w for w in self.retriever.vocab_dict if w)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.retriever.save(str(folder), show_progress=False)
        (folder / "columns.json").write_text(json.dumps(self.columns) + "\n")

    @classmethod
    def load(cls, folder: Path) -> LexicalIndex:
        import bm25s

        retriever = bm25s.BM25.load(str(folder), mmap=True, show_progress=False)
        return cls(retriever, json.loads((folder / "columns.json").read_text()))

    def search(self, texts: list[str], k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """BM25 scores and product rows ``(Q, k)`` of the best matches; rows that share no word with the query (or
        are not ``allowed``, a ``(N,)`` bool mask) are -1 with score 0."""
        k = min(k, self.count)
        mask = None if allowed is None else allowed.astype(np.float32)
        rows, scores = self.retriever.retrieve(
            _tokenize(texts), k=k, weight_mask=mask, show_progress=False, n_threads=0
        )
        rows, scores = np.asarray(rows, dtype=np.int64), np.asarray(scores, dtype=np.float32)
        rows[scores <= 0] = -1
        return np.where(rows >= 0, scores, 0.0).astype(np.float32), rows


def reciprocal_rank_fusion(lists: list[np.ndarray], k: int = RRF_K) -> list[tuple[int, float]]:
    """Items of several ranked lists (``-1`` entries ignored), by descending sum of ``1 / (k + rank)``."""
    scores: dict[int, float] = {}
    for ranked in lists:
        for rank, item in enumerate(int(i) for i in ranked if i >= 0):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank + 1)
    return sorted(scores.items(), key=lambda kv: -kv[1])


def weighted_fusion(
    dense: tuple[np.ndarray, np.ndarray], lexical: tuple[np.ndarray, np.ndarray], weight: float
) -> list[tuple[int, float]]:
    """Items by ``weight * dense + (1 - weight) * lexical``, each list's scores min-max normalised to [0, 1]
    (an item absent from one list scores 0 there). Each argument is ``(scores, items)`` of one query."""
    fused: dict[int, float] = {}
    for share, (scores, items) in ((weight, dense), (1.0 - weight, lexical)):
        keep = items >= 0
        s, ids = scores[keep].astype(np.float64), items[keep]
        if not len(ids):
            continue
        span = s.max() - s.min()
        norm = (s - s.min()) / span if span > 0 else np.ones_like(s)
        for item, value in zip(ids.tolist(), norm.tolist(), strict=True):
            fused[item] = fused.get(item, 0.0) + share * value
    return sorted(fused.items(), key=lambda kv: -kv[1])
