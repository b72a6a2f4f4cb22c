"""``multimodal index --index auto``: which FAISS index, from the vector count and a memory budget, and how wide
to search it, measured against exact search at build time.

The rules follow autofaiss's (``get_optimal_index_keys_v2``: flat for tiny sets, graph while vectors fit, inverted
lists of product-quantised codes with an OPQ rotation for the largest), shifted towards exactness because a
catalogue of 2 cores' worth is small: exact up to 20k vectors (a few ms a query), HNSW while it fits and up to
1M (HNSW builds take ~10 minutes a million vectors on 2 cores), IVF-Flat while raw vectors fit, then IVF-PQ with
the most bytes a vector the budget allows, OPQ from 10M vectors.

The search breadth (``nprobe`` for IVF, ``efSearch`` for HNSW) is the smallest of a doubling sweep whose recall@10
on held-out queries reaches the target; the queries are catalogue vectors with their own product left out of both
the exact and the approximate top 10, so a query never finds itself.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from multimodal.errors import UserError

EXACT_MAX, HNSW_MAX, OPQ_MIN = 20_000, 1_000_000, 10_000_000
HNSW_M = 32
UNITS = {
    "": 1,
    "B": 1,
    "K": 2**10,
    "KB": 2**10,
    "M": 2**20,
    "MB": 2**20,
    "G": 2**30,
    "GB": 2**30,
    "T": 2**40,
    "TB": 2**40,
}


def parse_bytes(text: str) -> int:
    """``"4GB"``, ``"512M"``, ``"1.5g"`` -> bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?B?)\s*", text.upper())
    if not m:
        raise UserError(f"--memory_budget {text!r} is not a size such as 4GB, 512MB or 1.5G")
    return int(float(m.group(1)) * UNITS[m.group(2)])


def ivf_cells(n: int) -> int:
    """IVF cells: a power of two near ``4 * sqrt(N)`` (autofaiss's rule), at least 39 vectors a cell."""
    return max(1, min(2 ** round(math.log2(max(4 * math.sqrt(n), 1))), n // 39, 65_536))


def memory(kind: str, n: int, dim: int, options: dict[str, Any]) -> int:
    """Bytes the index holds in memory (vectors or codes, graph links, id maps, centroids)."""
    ids = 24  # IndexIDMap2: the id and its reverse-map entry
    if kind == "flat":
        return n * (4 * dim + ids)
    if kind == "hnsw":
        return n * (4 * dim + 8 * options.get("hnsw_m", HNSW_M) + 8 + ids)
    centroids = options.get("nlist", ivf_cells(n)) * dim * 4
    if kind == "ivf":
        return n * (4 * dim + 8) + centroids
    rotation = dim * dim * 4 if options.get("opq") else 0
    return n * (options["pq_m"] + 8) + centroids + rotation + options["pq_m"] * 256 * (dim // options["pq_m"]) * 4


def choose(n: int, dim: int, budget: int | None, shards: int = 1) -> dict[str, Any]:
    """The index kind and build options for ``n`` vectors of ``dim`` within ``budget`` bytes (None: no limit),
    with the reason and the memory estimate. Per shard, for a sharded build; every shard gets the IVF cells one
    index of all ``n`` would have (a query's neighbours are spread over every shard by the id hash, so a shard
    with a quarter of the vectors still needs as many cells probed: see ``benchmarks/shard_simulation.py``)."""
    per_shard = math.ceil(n / shards)
    cells = max(1, min(ivf_cells(n), per_shard // 39))

    def fits(kind: str, opts: dict[str, Any]) -> bool:
        return budget is None or memory(kind, per_shard, dim, opts) * shards <= budget

    candidates: list[tuple[str, dict[str, Any], str]] = [
        ("flat", {}, f"{n:,} vectors: exact search is fast enough (<= {EXACT_MAX:,} a shard)"),
        ("hnsw", {"hnsw_m": HNSW_M, "ef_construction": 80}, f"<= {HNSW_MAX:,} vectors a shard and they fit: HNSW"),
        ("ivf", {"nlist": cells}, "raw vectors fit the budget: IVF-Flat"),
    ]
    for kind, opts, reason in candidates:
        small_enough = per_shard <= {"flat": EXACT_MAX, "hnsw": HNSW_MAX}.get(kind, math.inf)
        if small_enough and fits(kind, opts):
            return {
                "kind": kind,
                "options": opts,
                "reason": reason,
                "memory_bytes": memory(kind, per_shard, dim, opts) * shards,
            }
    for pq_m in (64, 48, 32, 24, 16, 12, 8, 4):
        if dim % pq_m or pq_m > dim // 2:
            continue
        opts = {"nlist": cells, "pq_m": pq_m, "opq": n >= OPQ_MIN}
        if fits("ivfpq", opts):
            reason = f"raw vectors exceed the budget: IVF-PQ with {pq_m} bytes a vector" + (
                f", OPQ rotation (>= {OPQ_MIN:,} vectors)" if opts["opq"] else ""
            )
            return {
                "kind": "ivfpq",
                "options": opts,
                "reason": reason,
                "memory_bytes": memory("ivfpq", per_shard, dim, opts) * shards,
            }
    smallest = memory("ivfpq", per_shard, dim, {"pq_m": 4, "nlist": cells}) * shards
    raise UserError(
        f"--memory_budget {budget / 2**30:.2f} GiB is too small for {n:,} vectors of {dim} dimensions "
        f"(the smallest index, IVF-PQ with 4 bytes a vector, needs {smallest / 2**30:.2f} GiB): raise it"
    )


def held_out_truth(vectors: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k labels of ``vectors[rows]`` over all vectors, each query's own row left out."""
    import faiss

    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(np.ascontiguousarray(vectors, dtype=np.float32))
    _, found = exact.search(np.ascontiguousarray(vectors[rows]), k + 1)
    return np.stack([[f for f in fr if f != r][:k] for fr, r in zip(found, rows, strict=True)])


def held_out_recall(index: Any, rows: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> float:
    """recall@k of ``index`` (a :class:`SearchIndex`) on the held-out queries (rows = products-table rows)."""
    k = truth.shape[1]
    _, found = index.search(queries, min(k + 1, index.count))
    hits = [len(set(t.tolist()) & set(f[f != r][:k].tolist())) for t, f, r in zip(truth, found, rows, strict=True)]
    return float(np.sum(hits) / truth.size)


def tune(index: Any, vectors: np.ndarray, target: float | None, check_queries: int, seed: int = 0) -> dict[str, Any]:
    """Measure (and with a ``target``, tune) recall@10 vs exact of a freshly built :class:`SearchIndex`, whose
    rows are the export's rows; updates ``index.info["options"]`` with the chosen breadth."""
    n = len(vectors)
    k = min(10, n - 1)
    if k < 1:
        return {"recall@10_vs_exact": 1.0}
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(check_queries, n), replace=False))
    truth = held_out_truth(vectors, rows, k)
    queries = vectors[rows]
    options = index.info["options"]
    out: dict[str, Any] = {"check_queries": len(rows)}
    if target is None:
        out["recall@10_vs_exact"] = round(held_out_recall(index, rows, queries, truth), 4)
        return out
    import faiss

    if index.kind == "hnsw":
        knob, values = "ef_search", [v for v in (16, 32, 64, 128, 256, 512, 1024, 2048, 4096) if v >= k]
    else:
        knob = "nprobe"
        nlist = faiss.extract_index_ivf(index.shards[0]).nlist
        values = sorted({min(2**i, nlist) for i in range(0, int(math.log2(nlist)) + 2)})
    sweep = []
    for value in values:
        options[knob] = value
        recall = held_out_recall(index, rows, queries, truth)
        sweep.append({knob: value, "recall@10": round(recall, 4)})
        if recall >= target:
            break
    out.update(
        {
            "recall@10_vs_exact": sweep[-1]["recall@10"],
            "target_recall": target,
            "target_met": sweep[-1]["recall@10"] >= target,
        }
    )
    out["tuned"] = {knob: options[knob], "sweep": sweep}
    return out
