"""Sharded search vs one index: N random vectors (default 10M, 128-d, clustered) in one IVF index and in S shards
(split by id hash, each its own IVF index with as many cells as the one index, top-k merged by
``faiss.ResultHeap``: ``SearchIndex`` with several shards, as ``multimodal index --shards S`` builds), both
answering the same queries in the same run.

Reports, for a sweep of ``nprobe`` (the same for the one index and for each shard): recall@10 against exact search
(brute force over all vectors, computed here), single-query p50/p99 latency of the whole search (the shards one
after the other in this process, plus the merge) and of the slowest shard alone (what a query costs when each shard
has a machine of its own), batch throughput, build times and the memory estimate for each layout.

    python -m benchmarks.shard_simulation --n 10000000 --out benchmarks/results/shard_simulation.json
"""

from __future__ import annotations

import argparse
import gc
import time
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import machine, ratio, say, seed_all, write_json
from benchmarks.harness import parse
from benchmarks.synthetic import vectors_and_queries
from benchmarks.timing import clocked, each_timed, percentiles
from multimodal.search.build import build_index
from multimodal.search.choice import memory
from multimodal.search.index import LABEL, SearchIndex, shard_of


def exact_top(x: np.ndarray, queries: np.ndarray, k: int, chunk: int = 1_000_000) -> np.ndarray:
    """Exact top-k rows of ``queries`` over ``x`` by brute force, in chunks of ``x``."""
    import faiss

    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    for start in range(0, len(x), chunk):
        scores = queries @ x[start : start + chunk].T
        heap.add_result(scores, np.broadcast_to(np.arange(start, start + len(scores[0])), scores.shape))
    heap.finalize()
    return heap.I


def measure(index: SearchIndex, queries: np.ndarray, truth: np.ndarray, k: int) -> dict[str, float]:
    """Single-query latency of the whole search and of the slowest shard alone (as on a machine of its own),
    batch throughput and recall@k against ``truth``."""
    params = index._params(None, 1.0, k)
    times, slowest = [], []
    for q in queries:  # the whole search, then each shard by itself, query by query
        times.append(clocked(lambda q=q: index.search(q[None], k))[0] * 1000)
        slowest.append(max(each_timed(lambda shard, q=q: shard.search(q[None], k, params=params), index.shards)[0]))
    seconds, (_, rows) = clocked(lambda: index.search(queries, k))
    hits = [len(set(r.tolist()) & set(t.tolist())) for r, t in zip(rows, truth, strict=True)]
    return {
        **percentiles(times),
        **percentiles(slowest, "slowest_shard_"),
        "batch_qps": round(len(queries) / seconds, 1),
        f"recall@{k}_vs_exact": round(float(np.sum(hits) / truth.size), 4),
    }


def layout(
    x: np.ndarray, products: pd.DataFrame, shards: int, nlist: int, args: argparse.Namespace
) -> tuple[SearchIndex, float]:
    owner = shard_of(products["id"], shards)
    start = time.perf_counter()
    parts = []
    for s in range(shards):
        rows = np.flatnonzero(owner == s)
        parts.append(build_index(x[rows], "ivf", nlist=nlist, ids=rows, train_size=args.train_per_cell, seed=args.seed))
        say(f"  shard {s + 1}/{shards}: {len(rows):,} vectors, {time.perf_counter() - start:.0f} s")
    return SearchIndex(parts, products, {"kind": "ivf", "options": {"nlist": nlist}}), time.perf_counter() - start


# --smoke: 20,000 16-d vectors, 2 shards of 16 cells, few queries
SMOKE = {"n": 20_000, "dim": 16, "shards": 2, "nlist": 16, "nprobe": [2, 4], "queries": 20, "clusters": 64}


def ratios(rows: list[dict[str, Any]], shards: int) -> dict[str, float | None]:
    """The sharded layout against one index at each nprobe: recall@10, p50 of the whole search in this process,
    p50 of the slowest shard alone (a machine a shard)."""
    one = {r["nprobe"]: r for r in rows if r["shards"] == 1}
    out: dict[str, float | None] = {}
    for r in (r for r in rows if r["shards"] == shards and r["nprobe"] in one):
        base, tag = one[r["nprobe"]], f"{shards} shards / one index, nprobe {r['nprobe']}"
        out[f"{tag}: recall@10"] = ratio(r["recall@10_vs_exact"], base["recall@10_vs_exact"])
        out[f"{tag}: p50 in one process"] = ratio(r["p50_ms"], base["p50_ms"])
        out[f"{tag}: slowest shard alone p50 / one index p50"] = ratio(r["slowest_shard_p50_ms"], base["p50_ms"])
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.shard_simulation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--n", type=int, default=10_000_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--nlist", type=int, default=4096, help="IVF cells of each index (k-means cost on 2 cores)")
    p.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64], help="cells searched in each index")
    p.add_argument("--train-per-cell", type=int, default=39, help="k-means training vectors per cell")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--clusters", type=int, default=16384)
    p.add_argument("--spread", type=float, default=0.6)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/shard_simulation.json")
    args = parse(p, argv, SMOKE, "benchmarks.shard_simulation")
    seed_all(args.seed)
    rng = np.random.default_rng(args.seed)
    say(f"generating {args.n:,} x {args.dim} vectors ({args.n * args.dim * 4 / 2**30:.1f} GiB)")
    x, queries = vectors_and_queries(args.n, args.queries, args.dim, rng, args.clusters, args.spread)
    products = pd.DataFrame({"id": np.arange(args.n), LABEL: np.arange(args.n)})
    say("exact top-k of the queries (brute force)")
    truth = exact_top(x, queries, args.k)
    result: dict[str, Any] = {"n": args.n, "dim": args.dim, "shards": args.shards, "queries": args.queries, "rows": []}
    payload = {"machine": machine(), "args": vars(args), "result": result}
    for shards in (1, args.shards):
        nlist = args.nlist  # as many cells in every shard as in the one index: each shard is searched the same way
        say(f"{shards} shard(s), {nlist} cells each: building")
        index, build_s = layout(x, products, shards, nlist, args)
        estimate = memory("ivf", -(-args.n // shards), args.dim, {"nlist": nlist}) * shards
        for nprobe in args.nprobe:
            index.info["options"]["nprobe"] = nprobe
            row = {"shards": shards, "nlist": nlist, "nprobe": nprobe,
                   "build_s": round(build_s, 1), "memory_gib": round(estimate / 2**30, 2),
                   **measure(index, queries, truth, args.k)}  # fmt: skip
            result["rows"].append(row)
            say(f"  {row}")
            payload["table"] = table(result)
            payload["ratios"] = ratios(result["rows"], args.shards)
            write_json(args.out, payload)
        del index
        gc.collect()
    print(table(result))


def table(result: dict[str, Any]) -> str:
    lines = [
        "| layout | cells a shard | nprobe a shard | recall@10 vs exact | p50 ms | p99 ms "
        "| slowest shard alone p50 / p99 ms | batch q/s | build s | memory GiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        name = "one index" if r["shards"] == 1 else f"{r['shards']} shards"
        lines.append(
            f"| {name} | {r['nlist']} | {r['nprobe']} | {r['recall@10_vs_exact']} | {r['p50_ms']} | {r['p99_ms']} | "
            f"{r['slowest_shard_p50_ms']} / {r['slowest_shard_p99_ms']} | {r['batch_qps']} | {r['build_s']} | "
            f"{r['memory_gib']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
