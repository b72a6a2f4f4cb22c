"""Building FAISS indexes: one kind (exact, IVF, HNSW, IVF-PQ) over vectors with labels, and a whole index folder
from an embedding export (choice, shards, BM25, recall check; see :mod:`multimodal.search.index` for the folder).

An id names one product: an export that holds an id on two rows is refused (:func:`refuse_repeated_ids`, naming the
id and both rows), by a build as by an update, and nothing is written."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from multimodal.errors import UserError
from multimodal.progress import progress
from multimodal.search.index import KINDS, LABEL, IndexKind, SearchIndex, _faiss, save_index, shard_of

ADD_CHUNK = 100_000  # vectors added to FAISS at a time


def default_nlist(n: int) -> int:
    """IVF cells: ``4 * sqrt(N)``, capped so every cell gets ~39 training points."""
    return max(1, min(int(4 * np.sqrt(n)), n // 39))


def build_index(
    vectors: np.ndarray,
    kind: IndexKind = "flat",
    nlist: int | None = None,
    nprobe: int = 16,
    hnsw_m: int = 32,
    ef_construction: int = 80,
    ef_search: int = 64,
    pq_m: int = 32,
    opq: bool = False,
    seed: int = 0,
    ids: np.ndarray | None = None,
    train_size: int = 256,
) -> Any:
    """A FAISS inner-product index over ``vectors (N, E)`` float32 (L2-normalised: IP = cosine).

    Args:
        kind: ``flat`` (exact), ``ivf`` (inverted lists over k-means cells), ``hnsw`` (graph) or ``ivfpq``
            (inverted lists of product-quantised codes, ``pq_m`` bytes a vector; ``opq`` rotates first).
        nlist: IVF cells; default :func:`default_nlist`.
        nprobe: IVF cells visited per query.
        hnsw_m: HNSW neighbours per node.
        ef_construction / ef_search: HNSW beam widths at build and query time.
        ids: ``(N,)`` int64 labels (default ``0..N-1``); the index then supports ``add_with_ids`` / ``remove_ids``.
        train_size: IVF / PQ training vectors per cell (k-means on a sample; FAISS's own guidance is 39 to 256).
    """
    faiss = _faiss()
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = x.shape
    labels = np.arange(n, dtype=np.int64) if ids is None else np.ascontiguousarray(ids, dtype=np.int64)
    if kind == "flat":
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    elif kind == "hnsw":
        graph = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = ef_construction
        graph.hnsw.efSearch = ef_search
        index = faiss.IndexIDMap2(graph)
    elif kind in ("ivf", "ivfpq"):
        index = _trained_ivf(x, kind, nlist or default_nlist(n), nprobe, pq_m, opq, seed, train_size)
    else:
        raise UserError(f"unknown index kind '{kind}' (choose {', '.join(KINDS)} or auto)")
    step = ADD_CHUNK  # bounded temporary memory for large catalogues, and progress on a large one
    with progress(n, f"index: adding vectors ({kind})", unit="vectors", shown=n > step) as bar:
        for start in range(0, n, step):
            index.add_with_ids(x[start : start + step], labels[start : start + step])
            bar.update(len(x[start : start + step]))
    return index


def _trained_ivf(
    x: np.ndarray, kind: str, cells: int, nprobe: int, pq_m: int, opq: bool, seed: int, train_size: int
) -> Any:
    """An empty IVF (``ivf``) or IVF-PQ (``ivfpq``) index over ``cells`` cells, trained on a seeded sample of
    ``x (N, E)`` of at most ``train_size`` vectors a cell."""
    faiss = _faiss()
    n, dim = x.shape
    if kind == "ivf":
        factory = f"IVF{cells},Flat"
    else:
        if dim % pq_m:
            raise UserError(f"pq_m={pq_m} must divide the vector dimension {dim}")
        factory = f"{f'OPQ{pq_m},' if opq else ''}IVF{cells},PQ{pq_m}x8"
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.seed = seed
    rng = np.random.default_rng(seed)
    sample = x if n <= train_size * cells else x[np.sort(rng.choice(n, train_size * cells, replace=False))]
    index.train(sample)
    ivf.nprobe = min(nprobe, cells)
    return index


def refuse_repeated_ids(products: pd.DataFrame, export: str | Path) -> None:
    """A one-line error naming the first id of ``products`` (an export's table) found on two rows, and both rows
    (0-based, in export order: the order of its ``products.parquet``)."""
    ids = products["id"].astype(str)
    repeated = ids.duplicated()
    if not repeated.any():
        return
    first = ids[repeated].iat[0]
    rows = np.flatnonzero(ids.to_numpy() == first)
    more = int(repeated.sum()) - 1
    raise UserError(
        f"export {export} holds id '{first}' on rows {rows[0]} and {rows[1]}"
        + (f" (and {more} more repeated rows)" if more else "")
        + ": an id names one product; give each product its own id and export again"
    )


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


def build_from_export(
    export_folder: str | Path,
    out: str | Path,
    kind: IndexKind | Literal["auto"] = "flat",
    check_queries: int = 1000,
    min_recall: float | None = None,
    seed: int = 0,
    shards: int = 1,
    lexical: list[str] | None = None,
    memory_budget: int | None = None,
    target_recall: float | None = None,
    dim: int | None = None,
    tune_hybrid: int = 0,
    tune_attributes: list[str] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Build, check and save an index over a complete export; returns the build info.

    ``kind="auto"`` picks the index from the vector count and ``memory_budget`` (bytes) and tunes its search
    breadth to ``target_recall`` (:mod:`multimodal.search.choice`); ``lexical`` names the text columns of a BM25
    index kept beside; ``shards`` splits the products by id hash into that many FAISS indexes; ``dim`` keeps the
    first dimensions of each vector, renormalised (:mod:`multimodal.search.matryoshka`); ``tune_hybrid`` shopper
    queries (0: none) choose the default fusion of a BM25 index (:mod:`multimodal.search.hybrid_tuning`), with
    attribute phrases of the ``tune_attributes`` columns (None: found in the products table).
    """
    from multimodal.search.export import CHECKPOINT
    from multimodal.search.lexical import LexicalIndex
    from multimodal.writers import output_lock

    if shards < 1:
        raise UserError(f"--shards must be at least 1, not {shards}")
    manifest, vectors, products = _read_export(export_folder)
    vectors, info = _kept_width(manifest, vectors, dim, export_folder)
    n, dim = vectors.shape
    lex = LexicalIndex.build(products, lexical) if lexical else None
    kind, options = _settle_kind(kind, options, n, dim, memory_budget, shards, info)
    start = time.perf_counter()
    parts = _build_shards(vectors, products["id"], kind, options, shards, seed)
    info.update(kind=kind, dim=int(dim), count=n, next_label=n, build_s=round(time.perf_counter() - start, 3),
                options=options, lexical=lexical or [], export=manifest,
                export_folder=str(Path(export_folder).resolve()))  # fmt: skip
    built = SearchIndex(shards=parts, products=products, info=info, folder=Path(export_folder), lexical=lex)
    if kind != "flat":
        _check_recall(built, vectors, target_recall, check_queries, seed, min_recall)
    if lex is not None and tune_hybrid > 0:
        _tune_hybrid(built, tune_hybrid, tune_attributes, seed)
    checkpoint = Path(export_folder) / CHECKPOINT
    with output_lock(Path(out)):
        save_index(out, parts, products, info, checkpoint if checkpoint.is_file() else None, lex)
    return info


def _tune_hybrid(built: SearchIndex, queries: int, attributes: list[str] | None, seed: int) -> None:
    """Store in the build's info the fusion of dense and BM25 search that scored best on ``queries`` shopper-like
    queries (:mod:`multimodal.search.hybrid_tuning`); nothing when no query encoder is at hand."""
    from multimodal.search.hybrid_tuning import tune_hybrid

    tuned = tune_hybrid(built, queries, attributes, seed)
    if tuned is not None:
        built.info["hybrid"] = tuned


def _build_shards(
    vectors: np.ndarray, ids: pd.Series, kind: str, options: dict[str, Any], shards: int, seed: int
) -> list[Any]:
    """One FAISS index a shard, over the vectors of the products whose id hashes to it (labels: their rows)."""
    owner = shard_of(ids, shards)
    return [
        build_index(vectors[owner == s], kind, seed=seed, ids=np.flatnonzero(owner == s), **options)  # type: ignore[arg-type]
        for s in range(shards)
    ]


def _read_export(export_folder: str | Path) -> tuple[dict[str, Any], np.ndarray, pd.DataFrame]:
    """An export's manifest, vectors ``(N, E)`` and products table (labelled ``0..N-1``); refuses an empty export
    or one that repeats an id."""
    from multimodal.search.export import load_export

    manifest, vectors, products = load_export(export_folder)
    if len(vectors) == 0:
        raise UserError(f"export {export_folder} holds no vectors")
    refuse_repeated_ids(products, export_folder)
    products = products.assign(**{LABEL: np.arange(len(vectors), dtype=np.int64)})
    return manifest, vectors, products


def _kept_width(
    manifest: dict[str, Any], vectors: np.ndarray, dim: int | None, export_folder: str | Path
) -> tuple[np.ndarray, dict[str, Any]]:
    """The vectors an index keeps of an export's (``dim``: their first dimensions, renormalised) and the info that
    records a cut (``cut_from``: the model's width, for the queries to be cut alike)."""
    from multimodal.search.matryoshka import check_dim, full_width, narrowed

    width = vectors.shape[1]
    if dim is not None:
        check_dim(dim, width, f"export {export_folder}")
        vectors = narrowed(vectors, dim)
    full = full_width(manifest, width)
    return vectors, ({"cut_from": full} if vectors.shape[1] < full else {})


def _check_recall(
    built: SearchIndex,
    vectors: np.ndarray,
    target_recall: float | None,
    check_queries: int,
    seed: int,
    min_recall: float | None,
) -> None:
    """Tune an approximate index's search breadth and record its recall@10 against exact search in its info;
    refuse it below ``min_recall``."""
    from multimodal.search.choice import tune

    info = built.info
    info.update(tune(built, vectors, target_recall, check_queries, seed))
    if min_recall is not None and info["recall@10_vs_exact"] < min_recall:
        raise UserError(
            f"{info['kind']} index recall@10 vs exact is {info['recall@10_vs_exact']:.3f} < {min_recall}: "
            "raise --nprobe / --ef-search, or use --target_recall"
        )


def _settle_kind(
    kind: str,
    options: dict[str, Any],
    n: int,
    dim: int,
    memory_budget: int | None,
    shards: int,
    info: dict[str, Any],
) -> tuple[str, dict[str, Any]]:
    """The index kind and options to build: ``auto`` chosen from the vector count and the memory budget (the
    choice is recorded in ``info``), and IVF cells a shard when the products are sharded."""
    from multimodal.search.choice import choose

    if kind == "auto":
        choice = choose(n, dim, memory_budget, shards=shards)
        kind, options = choice.pop("kind"), {**choice.pop("options"), **options}
        info["choice"] = choice
    if shards > 1 and kind in ("ivf", "ivfpq") and options.get("nlist") is None:
        # as many cells a shard as one index of all n would have (see choose())
        options = {**options, "nlist": max(1, min(default_nlist(n), n // shards // 39))}
    return kind, options
