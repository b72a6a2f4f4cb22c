"""FAISS indexes over an embedding export: exact inner product by default, IVF or HNSW for large catalogues.

An approximate index is checked against exact search when it is built (recall@k on sampled catalogue vectors
used as queries) and the result is stored with it. The products table (ids + metadata) is kept next to the
index, so a search result is an id, never a bare row number.

Folder layout: ``index.faiss``, ``products.parquet``, ``index.json`` (kind, dim, count, recall check, export) and
``model.ckpt`` (the export's checkpoint, a hard link or a copy: the folder answers queries wherever it is moved).
The folder is written as a temporary sibling and renamed into place, so a reader never sees half of a rebuild.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from multimodal.errors import UserError

IndexKind = Literal["flat", "ivf", "hnsw"]
INDEX_FILE, PRODUCTS_FILE, INFO_FILE, CHECKPOINT_FILE = "index.faiss", "products.parquet", "index.json", "model.ckpt"


def _faiss() -> Any:
    import faiss

    return faiss


def build_index(
    vectors: np.ndarray,
    kind: IndexKind = "flat",
    nlist: int | None = None,
    nprobe: int = 16,
    hnsw_m: int = 32,
    ef_construction: int = 80,
    ef_search: int = 64,
    seed: int = 0,
) -> Any:
    """A FAISS inner-product index over ``vectors (N, E)`` float32 (L2-normalised: IP = cosine).

    Args:
        kind: ``flat`` (exact), ``ivf`` (inverted lists over k-means cells) or ``hnsw`` (graph).
        nlist: IVF cells; default ``4 * sqrt(N)`` capped so every cell gets ~39 training points.
        nprobe: IVF cells visited per query.
        hnsw_m: HNSW neighbours per node.
        ef_construction / ef_search: HNSW beam widths at build and query time.
    """
    faiss = _faiss()
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = x.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "ivf":
        cells = nlist or max(1, min(int(4 * np.sqrt(n)), n // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, cells, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(x)
        index.nprobe = min(nprobe, cells)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
    else:
        raise UserError(f"unknown index kind '{kind}' (choose flat, ivf or hnsw)")
    index.add(x)
    return index


def recall_against_exact(index: Any, vectors: np.ndarray, queries: np.ndarray, k: int = 10) -> float:
    """Share of the exact top-k (brute force over ``vectors``) that ``index`` also returns, averaged over queries."""
    faiss = _faiss()
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(np.ascontiguousarray(vectors, dtype=np.float32))
    k = min(k, len(vectors))
    _, truth = exact.search(queries, k)
    _, found = index.search(queries, k)
    hits = [len(set(t) & set(f)) for t, f in zip(truth.tolist(), found.tolist(), strict=True)]
    return float(np.sum(hits) / (k * len(queries)))


@dataclass
class SearchIndex:
    """A loaded index with its products table and build info."""

    index: Any
    products: pd.DataFrame
    info: dict[str, Any]
    folder: Path = Path(".")

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @cached_property
    def rows_by_id(self) -> dict[str, int]:
        """Product id -> index row."""
        return {str(i): r for r, i in enumerate(self.products["id"])}

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k scores and rows ``(Q, k)`` for ``queries (Q, E)``; k must not exceed the catalogue."""
        if k < 1 or k > self.index.ntotal:
            raise UserError(f"k={k} is outside 1..{self.index.ntotal} (the index holds {self.index.ntotal} products)")
        if queries.shape[1] != self.dim:
            raise UserError(
                f"query vectors have dimension {queries.shape[1]}, the index {self.dim}: index and model do not match"
            )
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def save_index(
    folder: str | Path, index: Any, products: pd.DataFrame, info: dict[str, Any], checkpoint: Path | None = None
) -> Path:
    """Write an index folder so that a reader sees the old index or the new one, never a mix.

    Each build is a complete folder under the hidden sibling ``.<name>.builds/``; ``<name>`` is a symbolic link
    to the newest build, swapped in with one atomic rename. A reader resolves the link once and reads every file
    of one build (:func:`load_index`); the build before the newest is kept for readers still on it.
    """
    import uuid

    from multimodal.search.export import link_or_copy

    folder = Path(folder)
    if folder.exists() and not (folder / INFO_FILE).is_file():
        raise UserError(f"--out {folder} exists and is not a search index: it is left untouched; use another --out")
    builds = folder.with_name(f".{folder.name}.builds")
    build = builds / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    build.mkdir(parents=True)
    _faiss().write_index(index, str(build / INDEX_FILE))
    products.to_parquet(build / PRODUCTS_FILE, index=False)
    if checkpoint is not None:
        link_or_copy(checkpoint, build / CHECKPOINT_FILE)
    (build / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    if folder.exists() and not folder.is_symlink():  # an index written before builds were kept: move it aside
        os.replace(folder, builds / "0-previous")
    link = folder.with_name(f".{folder.name}.{os.getpid()}.link")
    link.unlink(missing_ok=True)
    link.symlink_to(build.relative_to(folder.parent))
    os.replace(link, folder)  # the one atomic step: readers resolve either the old build or this one
    for old in sorted((b for b in builds.iterdir() if b != build), key=lambda b: b.stat().st_mtime)[:-1]:
        shutil.rmtree(old, ignore_errors=True)
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
    """Read an index folder written by ``multimodal index`` (one-line errors for missing or corrupt files)."""
    folder = Path(folder).resolve()  # one build, read whole even if a rebuild swaps the link meanwhile
    if not (folder / INFO_FILE).is_file():
        raise UserError(f"{folder} is not a search index (no {INFO_FILE}); build one with `multimodal index`")
    try:
        info = json.loads((folder / INFO_FILE).read_text())
        index = _faiss().read_index(str(folder / INDEX_FILE))
        products = pd.read_parquet(folder / PRODUCTS_FILE)
    except Exception as err:  # noqa: BLE001 - any read failure means a damaged index folder
        raise UserError(
            f"index {folder} could not be read ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from err
    if index.ntotal != len(products):
        raise UserError(f"index {folder}: {index.ntotal} vectors but {len(products)} products")
    return SearchIndex(index=index, products=products, info=info, folder=folder)


def build_from_export(
    export_folder: str | Path,
    out: str | Path,
    kind: IndexKind = "flat",
    check_queries: int = 1000,
    min_recall: float | None = None,
    seed: int = 0,
    **options: Any,
) -> dict[str, Any]:
    """Build, check and save an index over a complete export; returns the build info."""
    from multimodal.search.export import load_export

    manifest, vectors, products = load_export(export_folder)
    if len(vectors) == 0:
        raise UserError(f"export {export_folder} holds no vectors")
    start = time.perf_counter()
    index = build_index(vectors, kind, seed=seed, **options)
    build_s = time.perf_counter() - start
    info: dict[str, Any] = {
        "kind": kind,
        "dim": int(vectors.shape[1]),
        "count": len(vectors),
        "build_s": round(build_s, 3),
        "options": options,
        "export": manifest,
        "export_folder": str(Path(export_folder).resolve()),
    }
    if kind != "flat":
        rng = np.random.default_rng(seed)
        rows = rng.choice(len(vectors), size=min(check_queries, len(vectors)), replace=False)
        info["recall@10_vs_exact"] = round(recall_against_exact(index, vectors, vectors[rows]), 4)
        if min_recall is not None and info["recall@10_vs_exact"] < min_recall:
            raise UserError(
                f"{kind} index recall@10 vs exact is {info['recall@10_vs_exact']:.3f} < {min_recall}: "
                "raise --nprobe / --ef-search"
            )
    from multimodal.search.export import CHECKPOINT

    checkpoint = Path(export_folder) / CHECKPOINT
    from multimodal.writers import output_lock

    with output_lock(Path(out)):
        save_index(out, index, products, info, checkpoint if checkpoint.is_file() else None)
    return info
