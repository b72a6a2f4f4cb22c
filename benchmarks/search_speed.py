"""Search speed: exact vs IVF vs HNSW (FAISS, inner product) on random L2-normalised vectors.

Two random distributions: ``clustered`` (default; vectors and queries drawn around ``--clusters`` random centres,
the shape real embedding catalogues have, where the true top 10 are meaningfully closer than the rest) and
``uniform`` (uniform on the sphere: every point is nearly equidistant from every query in 256-d, the worst case
for approximate search, reported for completeness).

For each catalogue size: build time, single-query latency p50/p99 (one query at a time, as `multimodal search`
does), batch throughput, and recall@10 of the approximate indexes against exact search, in the same run.

    python -m benchmarks.search_speed --out benchmarks/results/search_speed.json

Filtered search (``--filter-sizes``, default 1M vectors): each product gets a random ``bucket`` 0..99 and the
filters ``bucket < 50``, ``< 10`` and ``< 1`` keep 50%, 10% and 1% of them. Each index answers through the
product's path (``Filter`` -> ``SearchIndex.search``: an ``IDSelectorBitmap`` inside FAISS, IVF / HNSW search
widened as the filter narrows, an exact pass over the kept vectors for small selections), against exact filtered
search for recall@10, and against the common post-filter (search the top 100 unfiltered, then drop the products
the filter rejects) in the same run. ``short`` counts queries answered with fewer than k products although at
least k matched.

    python -m benchmarks.search_speed --only filtered --filter-sizes 1000000 --append
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from benchmarks.common import machine, ratio, say, seed_all, write_json
from benchmarks.smoke import parse
from benchmarks.synthetic import vectors_and_queries
from benchmarks.timing import clocked, each_timed, percentiles
from multimodal.search.build import build_index
from multimodal.search.index import LABEL, SearchIndex

# the swept search knob of an approximate index: its FAISS parameter name and the option holding the sweep
SWEEPS = {"ivf": ("nprobe", "nprobe"), "hnsw": ("efSearch", "ef_search")}
METHODS = ("prefilter", "post-filter top 100")
# --smoke: 2,000 32-d vectors (unfiltered and filtered), few queries, small sweeps
SMOKE = {"sizes": [2000], "dim": 32, "queries": 50, "latency_queries": 20, "clusters": 32, "nprobe": [4],
         "max_nlist": 32, "hnsw_m": 8, "ef_construction": 16, "ef_search": [16], "filter_sizes": [2000]}  # fmt: skip


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found.tolist(), truth.tolist(), strict=True)]))


def indexes(n: int, args: argparse.Namespace) -> dict[str, tuple[str, dict[str, Any]]]:
    """The indexes compared at ``n`` vectors: name -> (``build_index`` kind, options); HNSW left out above
    ``--hnsw-max-n`` (the build alone takes too long on this machine)."""
    out = {
        "exact": ("flat", {}),
        "ivf": ("ivf", {"nprobe": args.nprobe[0], "nlist": min(int(4 * np.sqrt(n)), args.max_nlist)}),
        "hnsw": ("hnsw", {"hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction,
                          "ef_search": args.ef_search[0]}),
    }  # fmt: skip
    if n > args.hnsw_max_n:
        del out["hnsw"]
    return out


def searched(index: Any, queries: np.ndarray, k: int, latency_queries: int) -> tuple[dict[str, float], np.ndarray]:
    """Single-query latency percentiles (one query per call, as `multimodal search` does) and the batch
    throughput of ``index``; also the rows the batch found."""
    ms, _ = each_timed(lambda q: index.search(q[None], k), queries[:latency_queries])
    seconds, (_, found) = clocked(lambda: index.search(queries, k))
    return {**percentiles(ms), "batch_qps": round(len(queries) / seconds, 1)}, found


def run_size(n: int, dim: int, args: argparse.Namespace, rng: np.random.Generator) -> dict[str, Any]:
    say(f"n={n}: generating vectors")
    clustered = args.distribution == "clustered"
    x, queries = vectors_and_queries(n, args.queries, dim, rng, args.clusters, args.spread, clustered)
    result: dict[str, Any] = {"n": n, "dim": dim, "distribution": args.distribution, "queries": args.queries,
                              "k": args.k}  # fmt: skip
    truth = None
    for name, (kind, options) in indexes(n, args).items():
        build_s, index = clocked(partial(build_index, x, kind, seed=args.seed, **options))
        knob, sweep = SWEEPS.get(name, ("", ""))
        for value in getattr(args, sweep) if knob else [None]:
            if knob:  # through FAISS's parameter space: it reaches the IVF / HNSW index inside the id map
                faiss.ParameterSpace().set_index_parameter(index, knob, value)
            speed, found = searched(index, queries, args.k, args.latency_queries)
            truth = found if truth is None else truth
            label = f"{name} {knob}={value}" if knob else name
            result[label] = row = {"build_s": round(build_s, 2), **speed,
                                   f"recall@{args.k}_vs_exact": round(recall(found, truth), 4),
                                   "options": {**options, **({knob: value} if knob else {})}}  # fmt: skip
            say(f"n={n} {label}: {row}")
        del index
    if n > args.hnsw_max_n:
        say(f"n={n} hnsw: skipped (n > --hnsw-max-n {args.hnsw_max_n}: the build alone takes too long on this "
            "machine)")  # fmt: skip
        result["hnsw"] = {"skipped": f"n > --hnsw-max-n {args.hnsw_max_n}"}
    return result


def filtered_search(index: SearchIndex, mask: np.ndarray, method: str, k: int, query: np.ndarray) -> np.ndarray:
    """One query's rows: the filter applied inside FAISS (``prefilter``) or to the unfiltered top 100."""
    if method == "prefilter":
        return index.search(query[None], k, mask)[1][0]
    rows = index.search(query[None], 100)[1][0]
    return rows[mask[rows]][:k]


def run_filtered(n: int, dim: int, args: argparse.Namespace, rng: np.random.Generator) -> dict[str, Any]:
    """Filtered search at ``n`` vectors: prefilter inside FAISS vs post-filter, recall vs exact filtered search."""
    import pandas as pd

    from multimodal.search.filters import Filter

    say(f"filtered n={n}: generating vectors")
    x, queries = vectors_and_queries(n, args.latency_queries, dim, rng, args.clusters, args.spread)
    products = pd.DataFrame({"id": np.arange(n).astype(str), "bucket": rng.integers(0, 100, n), LABEL: np.arange(n)})
    result: dict[str, Any] = {"n": n, "dim": dim, "queries": len(queries), "k": args.k, "rows": {}}
    truth: dict[str, np.ndarray] = {}
    for name, (kind, options) in indexes(n, args).items():
        build_s, shard = clocked(partial(build_index, x, kind, seed=args.seed, **options))
        say(f"filtered n={n} {name}: built in {build_s:.1f} s")
        index = SearchIndex([shard], products, {"kind": kind, "options": options})
        for share in args.filter_shares:
            expr = f"bucket < {round(share * 100)}"
            mask = Filter(expr, products).mask()
            for method in METHODS:
                ms, rows = each_timed(partial(filtered_search, index, mask, method, args.k), queries)
                found = [r[r >= 0] for r in rows]
                if name == "exact" and method == "prefilter":
                    truth[expr] = np.stack(found)
                hits = [len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth[expr], strict=True)]
                row = {"filter": expr, "matching": round(float(mask.mean()), 4), **percentiles(ms),
                       f"recall@{args.k}_vs_exact_filtered": round(float(np.sum(hits) / truth[expr].size), 4),
                       "short": int(sum(len(f) < args.k for f in found)), "options": options}  # fmt: skip
                result["rows"][f"{name} {method} {expr}"] = {"index": name, "method": method, **row}
                say(f"filtered n={n} {name} {method} {expr}: {row}")
        del index, shard
    return result


def filtered_table(results: list[dict[str, Any]], k: int) -> str:
    lines = [
        f"| n | index | method | filter (share kept) | p50 ms | p99 ms | recall@{k} vs exact filtered | short of k |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        for r in res["rows"].values():
            lines.append(
                f"| {res['n']:,} | {r['index']} | {r['method']} | `{r['filter']}` ({r['matching']:.0%}) | "
                f"{r['p50_ms']} | {r['p99_ms']} | {r[f'recall@{k}_vs_exact_filtered']} | "
                f"{r['short']} / {res['queries']} |"
            )
    return "\n".join(lines)


def table(results: list[dict[str, Any]], k: int) -> str:
    lines = [
        f"| vectors | n | index | build s | p50 ms | p99 ms | batch q/s | recall@{k} vs exact |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        dist = res.get("distribution", "uniform")
        for name in [k for k in res if isinstance(res[k], dict)]:
            r = res[name]
            if "skipped" in r:
                lines.append(f"| {dist} | {res['n']:,} | {name} | skipped: {r['skipped']} | | | | |")
                continue
            lines.append(f"| {dist} | {res['n']:,} | {name} | {r['build_s']} | {r['p50_ms']} | {r['p99_ms']} | "
                         f"{r['batch_qps']} | {r[f'recall@{k}_vs_exact']} |")  # fmt: skip
    return "\n".join(lines)


def ratios(results: list[dict[str, Any]], filtered: list[dict[str, Any]], k: int) -> dict[str, float | None]:
    """Each approximate index against exact search in this run: p50 speed-up and recall@k; filtered, the
    post-filter's recall against the prefilter's."""
    out: dict[str, float | None] = {}
    for res in results:
        exact = res.get("exact", {})
        for label, row in res.items():
            if isinstance(row, dict) and label != "exact" and "p50_ms" in row:
                tag = f"{res['distribution']} n={res['n']} {label}"
                out[f"{tag}: exact p50 / p50"] = ratio(exact.get("p50_ms"), row["p50_ms"])
                out[f"{tag}: recall@{k} vs exact"] = row[f"recall@{k}_vs_exact"]
    recall_key = f"recall@{k}_vs_exact_filtered"
    for res in filtered:
        rows = res["rows"]
        for key, row in rows.items():
            pre = rows.get(key.replace(METHODS[1], METHODS[0]))
            if row["method"] != METHODS[0] and pre:
                tag = f"n={res['n']} {row['index']} {row['filter']}: post-filter / prefilter recall"
                out[tag] = ratio(row[recall_key], pre[recall_key])
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.search_speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--queries", type=int, default=1000, help="queries for recall and batch throughput")
    p.add_argument("--latency-queries", type=int, default=200, help="single queries timed for p50/p99")
    p.add_argument("--distribution", default="clustered", choices=["clustered", "uniform"])
    p.add_argument("--clusters", type=int, default=4096, help="random centres of the clustered distribution")
    p.add_argument("--spread", type=float, default=0.6, help="noise norm around a centre (clustered)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--nprobe", type=int, nargs="+", default=[16, 64, 256], help="IVF cells searched (a sweep)")
    p.add_argument(
        "--max-nlist", type=int, default=1024, help="IVF cells: 4*sqrt(n) capped here (k-means cost on 2 cores)"
    )
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--ef-construction", type=int, default=80)
    p.add_argument("--ef-search", type=int, nargs="+", default=[64, 256], help="HNSW search beams (a sweep)")
    p.add_argument("--hnsw-max-n", type=int, default=1_000_000, help="skip HNSW above this size (build time)")
    p.add_argument("--filter-sizes", type=int, nargs="+", default=[1_000_000], help="catalogue sizes of filtered rows")
    p.add_argument("--filter-shares", type=float, nargs="+", default=[0.5, 0.1, 0.01], help="shares the filters keep")
    p.add_argument("--only", choices=["all", "unfiltered", "filtered"], default="all")
    p.add_argument("--append", action="store_true", help="add these sizes to the results already in --out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/search_speed.json")
    return parse(p, argv, SMOKE, "benchmarks.search_speed")


def kept(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """With ``--append``, the results already in ``--out`` that this run does not measure again."""
    previous = json.loads(Path(args.out).read_text()) if args.append and Path(args.out).is_file() else {}
    rerun = {(n, args.distribution) for n in args.sizes} if args.only != "filtered" else set()
    skip = set(args.filter_sizes) if args.only != "unfiltered" else set()
    results = [r for r in previous.get("results", []) if (r["n"], r.get("distribution", "uniform")) not in rerun]
    return results, [r for r in previous.get("filtered", []) if r["n"] not in skip]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    seed_all(args.seed)
    rng = np.random.default_rng(args.seed)
    results, filtered = kept(args)

    def save() -> None:
        payload = {"machine": machine(), "args": vars(args), "results": results, "table": table(results, args.k)}
        payload.update(filtered=filtered, filtered_table=filtered_table(filtered, args.k))
        payload["ratios"] = ratios(results, filtered, args.k)
        write_json(args.out, payload)

    if args.only != "filtered":
        for n in args.sizes:
            results.append(run_size(n, args.dim, args, rng))
            save()
        print(table(results, args.k))
    if args.only != "unfiltered":
        for n in args.filter_sizes:
            filtered.append(run_filtered(n, args.dim, args, rng))
            save()
        print(filtered_table(filtered, args.k))


if __name__ == "__main__":
    main()
