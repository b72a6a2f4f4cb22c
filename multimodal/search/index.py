"""A search index folder and its reading side: FAISS shards (exact, IVF, HNSW or IVF-PQ, built by
:mod:`multimodal.search.build`), the products table, filters applied inside FAISS, an optional BM25 index beside.

Every vector carries a *label* (int64, the products table's ``_label`` column, never reused), so products can be
added and removed without a rebuild (:mod:`multimodal.search.updates`) and a result is an id, never a bare row.
Every id is in the table once (builds and updates refuse an export that repeats one), and its vector, title and
metadata come from one row of one export.
An approximate index is checked against exact search when it is built (recall@10 of held-out catalogue vectors,
each query's own product left out) and the result is stored with it.

Folder layout: ``index.faiss`` (or ``index-NNN.faiss`` per shard), ``products.parquet``, ``index.json`` (kind,
options, dim, count, shards, recall check, export), ``lexical/`` (BM25, when built) and ``model.ckpt`` (the
export's checkpoint, a hard link or a copy: the folder answers queries wherever it is moved), plus an empty
``.lock``. Each build or update is a new folder under ``.<name>.builds/`` and ``<name>`` a link swapped to it with
one rename, so a reader never sees half of a rebuild or an update; a reader holds a shared lock on its build while
it uses it and a writer deletes only builds nobody holds (:mod:`multimodal.search.builds`).
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import pandas as pd

from multimodal.errors import UserError

IndexKind = Literal["flat", "ivf", "hnsw", "ivfpq"]
KINDS = ("flat", "ivf", "hnsw", "ivfpq")
INDEX_FILE, PRODUCTS_FILE, INFO_FILE, CHECKPOINT_FILE = "index.faiss", "products.parquet", "index.json", "model.ckpt"
LEXICAL_DIR = "lexical"
LABEL = "_label"  # the products table's column of FAISS labels (hidden from results)
EXACT_SUBSET = 20_000  # HNSW: a filter keeping at most this many products is answered exactly over them
MAX_EF = 4096


def _faiss() -> Any:
    import faiss

    return faiss


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


def shard_file(shard: int, shards: int) -> str:
    return INDEX_FILE if shards == 1 else f"index-{shard:03d}.faiss"


def save_index(
    folder: str | Path,
    index: Any,
    products: pd.DataFrame,
    info: dict[str, Any],
    checkpoint: Path | None = None,
    lexical: Any = None,
) -> Path:
    """Write an index folder so that a reader sees the old index or the new one, never a mix.

    ``index`` is one FAISS index or a list of shards. Each build is a complete folder under the hidden sibling
    ``.<name>.builds/``; ``<name>`` is a symbolic link to the newest build, swapped in with one atomic rename, and
    older builds are deleted unless a reader holds them (:mod:`multimodal.search.builds`).
    """
    from multimodal.search.builds import new_build, publish

    folder = Path(folder)
    if folder.exists() and not (folder / INFO_FILE).is_file():
        raise UserError(f"--out {folder} exists and is not a search index: it is left untouched; use another --out")
    repeated = products["id"].astype(str).duplicated()
    if repeated.any():  # the callers refuse repeated ids with their rows first: this guards the invariant
        raise UserError(f"index {folder}: id '{products['id'].astype(str)[repeated].iat[0]}' on two rows, not written")
    shards = index if isinstance(index, list) else [index]
    build = new_build(folder)
    for s, shard in enumerate(shards):
        _faiss().write_index(shard, str(build / shard_file(s, len(shards))))
    products.to_parquet(build / PRODUCTS_FILE, index=False)
    if lexical is not None:
        lexical.save(build / LEXICAL_DIR)
    if checkpoint is not None:
        from multimodal.search.export import link_or_copy  # (imports torch: only when there is a checkpoint)

        link_or_copy(checkpoint, build / CHECKPOINT_FILE)
    (build / INFO_FILE).write_text(json.dumps({**info, "shards": len(shards)}, indent=2) + "\n")
    publish(folder, build)
    return folder


def index_checkpoint(index: SearchIndex) -> Path:
    """The checkpoint that answers queries: the one kept in the index folder, else (older indexes) the one the
    export names, relative to the export folder or absolute."""
    own = index.folder / CHECKPOINT_FILE
    if own.is_file():
        return own
    named = Path(index.info["export"].get("checkpoint", CHECKPOINT_FILE))
    return named if named.is_absolute() else Path(index.info.get("export_folder", ".")) / named


def load_index(folder: str | Path) -> SearchIndex:
    """Read one build of an index folder written by ``multimodal index`` (one-line errors for missing or corrupt
    files). The link is resolved once and the build is held (:func:`multimodal.search.builds.hold`) until the
    returned index is closed or dropped, so a rebuild meanwhile never deletes the files it reads."""
    from multimodal.search.builds import hold

    build, lock = hold(Path(folder), INFO_FILE)
    try:
        return _read_build(build, lock)
    except BaseException:
        if lock is not None:
            lock.close()
        raise


def _read_build(folder: Path, lock: IO[bytes] | None) -> SearchIndex:
    from multimodal.search.lexical import LexicalIndex

    if not (folder / INFO_FILE).is_file():
        raise UserError(f"{folder} is not a search index (no {INFO_FILE}); build one with `multimodal index`")
    try:
        info = json.loads((folder / INFO_FILE).read_text())
        count = int(info.get("shards", 1))
        shards = [_faiss().read_index(str(folder / shard_file(s, count))) for s in range(count)]
        products = pd.read_parquet(folder / PRODUCTS_FILE)
        lexical = LexicalIndex.load(folder / LEXICAL_DIR) if (folder / LEXICAL_DIR).is_dir() else None
    except Exception as err:  # noqa: BLE001 - any read failure means a damaged index folder
        raise UserError(
            f"index {folder} could not be read ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from err
    stored = sum(s.ntotal for s in shards)
    if stored != len(products) + int(info.get("dead", 0)):
        raise UserError(f"index {folder}: {stored} vectors but {len(products)} products")
    if lexical is not None and lexical.count != len(products):
        raise UserError(f"index {folder}: the BM25 index holds {lexical.count} products, the table {len(products)}")
    return SearchIndex(shards=shards, products=products, info=info, folder=folder, lexical=lexical, hold=lock)
