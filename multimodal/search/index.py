"""The search structure of an index: FAISS shards (exact, IVF, HNSW or IVF-PQ, built by
:mod:`multimodal.search.build`), the products table, filters applied inside FAISS, an optional BM25 index beside.

Every vector carries a *label* (int64, the products table's ``_label`` column, never reused), so products can be
added and removed without a rebuild (:mod:`multimodal.search.updates`) and a result is an id, never a bare row.
Every id is in the table once (builds and updates refuse an export that repeats one), and its vector, title and
metadata come from one row of one export.
An approximate index is checked against exact search when it is built (recall@10 of held-out catalogue vectors,
each query's own product left out) and the result is stored with it.

The folder an index is saved in and read from is :mod:`multimodal.search.index_folder` (re-exported here).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import pandas as pd

from multimodal.errors import UserError
from multimodal.search.index_folder import (  # noqa: F401 - re-exported: the index's one import path
    CHECKPOINT_FILE,
    INDEX_FILE,
    INFO_FILE,
    LEXICAL_DIR,
    PRODUCTS_FILE,
    _faiss,
    index_checkpoint,
    load_index,
    save_index,
    shard_file,
)

IndexKind = Literal["flat", "ivf", "hnsw", "ivfpq"]
KINDS = ("flat", "ivf", "hnsw", "ivfpq")
LABEL = "_label"  # the products table's column of FAISS labels (hidden from results)
EXACT_SUBSET = 20_000  # HNSW: a filter keeping at most this many products is answered exactly over them
MAX_EF = 4096


def shard_of(ids: pd.Series | list[str], shards: int) -> np.ndarray:
    """The shard of each product id: a stable hash (CRC-32) of the id, modulo the shard count."""
    if shards == 1:
        return np.zeros(len(ids), dtype=np.int64)
    return np.fromiter((zlib.crc32(str(i).encode()) % shards for i in ids), dtype=np.int64, count=len(ids))


@dataclass
class SearchIndex:
    """A loaded index: its FAISS shards, products table (sorted by label), build info and BM25 index."""

    shards: list[Any]
    products: pd.DataFrame
    info: dict[str, Any]
    folder: Path = Path(".")
    lexical: Any = None  # multimodal.search.lexical.LexicalIndex
    filter_cache: dict[str, Any] = field(default_factory=dict, repr=False)  # numeric forms of filtered columns
    hold: IO[bytes] | None = field(default=None, repr=False, compare=False)  # a shared lock: keeps folder on disk

    def __post_init__(self) -> None:
        if LABEL not in self.products.columns:  # an index written before labels: labels are row numbers
            self.products = self.products.assign(**{LABEL: np.arange(len(self.products), dtype=np.int64)})

    def close(self) -> None:
        """Release the build (the checkpoint and BM25 files are read from it while the index is in use): a later
        rebuild may then delete it. Dropping the last reference does the same."""
        if self.hold is not None:
            self.hold.close()
            self.hold = None

    @property
    def dim(self) -> int:
        return int(self.shards[0].d)

    @property
    def count(self) -> int:
        """Products that can be found (an HNSW index keeps removed vectors until a rebuild, never returned)."""
        return len(self.products)

    @property
    def kind(self) -> str:
        return str(self.info.get("kind", "flat"))

    def _search_shards(self, q: np.ndarray, k: int, selector: Any, share: float) -> tuple[np.ndarray, np.ndarray]:
        """Each shard searched with parameters of its own, top-k merged by ``faiss.ResultHeap``.

        (FAISS's ``IndexShards`` passes one parameters object to every shard's thread, and ``IndexIDMap`` swaps the
        selector inside it while it searches: shards then filtered by each other's id maps.)
        """
        if len(self.shards) == 1:
            return self.shards[0].search(q, k, params=self._params(selector, share, k))
        heap = _faiss().ResultHeap(len(q), k, keep_max=True)
        for shard in self.shards:
            heap.add_result(*shard.search(q, min(k, shard.ntotal), params=self._params(selector, share, k)))
        heap.finalize()
        return heap.D, heap.I

    @cached_property
    def labels(self) -> np.ndarray:
        return self.products[LABEL].to_numpy(dtype=np.int64)

    @cached_property
    def rows_by_id(self) -> dict[str, int]:
        """Product id -> products-table row."""
        return {str(i): r for r, i in enumerate(self.products["id"])}

    @cached_property
    def shard_rows(self) -> np.ndarray:
        return shard_of(self.products["id"], len(self.shards))

    @property
    def has_dead(self) -> bool:
        return sum(s.ntotal for s in self.shards) != self.count

    def reconstruct(self, rows: np.ndarray) -> np.ndarray:
        """Stored vectors ``(len(rows), E)`` of products-table rows (decoded codes for IVF-PQ)."""
        faiss = _faiss()
        out = np.zeros((len(rows), self.dim), np.float32)
        shard_ids = self.shard_rows[rows]
        for s, shard in enumerate(self.shards):
            take = np.flatnonzero(shard_ids == s)
            if not len(take):
                continue
            if self.kind in ("ivf", "ivfpq"):
                ivf = faiss.extract_index_ivf(shard)
                if ivf.direct_map.type == faiss.DirectMap.NoMap:
                    ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
            out[take] = shard.reconstruct_batch(self.labels[rows[take]])
        return out

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k scores and products-table rows ``(Q, k)`` for ``queries (Q, E)``; with ``allowed`` (a ``(N,)``
        bool mask over the products table) only those products, filtered inside FAISS. Fewer than k rows come
        back (-1, score -inf) only when fewer than k products are allowed."""
        if k < 1 or k > self.count:
            raise UserError(f"k={k} is outside 1..{self.count} (the index holds {self.count} products)")
        if queries.shape[1] != self.dim:
            raise UserError(
                f"query vectors have dimension {queries.shape[1]}, the index {self.dim}: index and model do not match"
            )
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if allowed is None and not self.has_dead:
            scores, found = self._search_shards(q, k, None, 1.0)
            return scores, self._rows(found)
        keep = np.ones(self.count, bool) if allowed is None else np.asarray(allowed, dtype=bool)
        matching = int(np.count_nonzero(keep))
        if matching == 0:
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        if self.kind == "hnsw" and matching <= EXACT_SUBSET:  # a graph walk meets few allowed products
            return self._exact_subset(q, np.flatnonzero(keep), k)
        selector, bitmap = self._selector(keep)
        scores, found = self._search_shards(q, k, selector, matching / self.count)
        out = self._rows(found)
        short = np.flatnonzero((out >= 0).sum(1) < min(k, matching))
        if len(short) and self.kind in ("ivf", "ivfpq"):  # every cell: the allowed products are all scanned
            scores[short], found_short = self._search_shards(q[short], k, selector, 0.0)
            out[short] = self._rows(found_short)
        elif len(short):  # the graph walk missed allowed products: answer those queries exactly
            scores[short], out[short] = self._exact_subset(q[short], np.flatnonzero(keep), k)
        del bitmap
        return scores, out

    def _selector(self, keep: np.ndarray) -> tuple[Any, np.ndarray]:
        """A FAISS ``IDSelectorBitmap`` over labels keeping the products-table rows of ``keep`` (bool), and its
        bitmap (which must outlive the selector: FAISS only points to it)."""
        faiss = _faiss()
        labels = self.labels
        size = int(labels[-1]) + 1
        if size == len(labels):  # labels 0..N-1 (nothing removed): the row mask is the label bitmap
            bits = keep
        else:
            bits = np.zeros(size, dtype=bool)
            bits[labels[keep]] = True
        packed = np.packbits(bits, bitorder="little")
        # FAISS checks ``id >> 3 < n``: n is the bitmap's length in bytes (its docstring suggests bits; giving bits
        # lets ids past the last kept one read memory beyond the array)
        return faiss.IDSelectorBitmap(len(packed), faiss.swig_ptr(packed)), packed

    def _params(self, selector: Any, share: float, k: int) -> Any:
        """Search parameters: the filter, and IVF / HNSW breadth widened as the filter narrows (so about as many
        allowed candidates are met as an unfiltered search meets)."""
        faiss = _faiss()
        options = self.info.get("options", {})
        if self.kind in ("ivf", "ivfpq"):
            nlist = faiss.extract_index_ivf(self.shards[0]).nlist
            nprobe = nlist if share <= 0 else min(nlist, math.ceil(int(options.get("nprobe", 16)) / share))
            return faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
        if self.kind == "hnsw":
            ef = MAX_EF if share <= 0 else min(MAX_EF, math.ceil(max(int(options.get("ef_search", 64)), k) / share))
            return faiss.SearchParametersHNSW(sel=selector, efSearch=ef)
        return faiss.SearchParameters(sel=selector) if selector is not None else None

    def _rows(self, found: np.ndarray) -> np.ndarray:
        """Products-table rows of FAISS labels (-1 for none or a removed product)."""
        labels = self.labels
        pos = np.searchsorted(labels, found).clip(0, max(len(labels) - 1, 0))
        ok = (found >= 0) & (labels[pos] == found) if len(labels) else np.zeros_like(found, bool)
        return np.where(ok, pos, -1)

    def _exact_subset(
        self, q: np.ndarray, rows: np.ndarray, k: int, chunk: int = 50_000
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over the given products-table rows, their stored vectors read in chunks."""
        heap = _faiss().ResultHeap(len(q), k, keep_max=True)
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            scores = q @ self.reconstruct(part).T
            heap.add_result(scores, np.broadcast_to(part, scores.shape))
        heap.finalize()
        return heap.D, heap.I
