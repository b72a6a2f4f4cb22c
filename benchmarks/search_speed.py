"""Search speed: exact vs IVF vs HNSW (FAISS, inner product) on random L2-normalised vectors.

Two random distributions: ``clustered`` (default; vectors and queries drawn around ``--clusters`` random centres,
the shape real embedding catalogues have, where the true top 10 are meaningfully closer than the rest) and
``uniform`` (uniform on the sphere: every point is nearly equidistant from every query in 256-d, the worst case
for approximate search, reported for completeness).

For each catalogue size: build time, single-query latency p50/p99 (one query at a time, as `multimodal search`
does), batch throughput, and recall@10 of the approximate indexes against exact search, in the same run.

    python -m benchmarks.search_speed --out benchmarks/results/search_speed.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import machine, say, seed_all, write_json
from multimodal.search.index import build_index


def random_unit(n: int, dim: int, rng: np.random.Generator, chunk: int = 100_000) -> np.ndarray:
    """``(n, dim)`` float32 rows uniform on the unit sphere, generated in chunks to bound temporary memory."""
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        x = rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32)
        out[start : start + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def clustered_unit(
    n: int, dim: int, rng: np.random.Generator, centres: np.ndarray, spread: float, chunk: int = 100_000
) -> np.ndarray:
    """``(n, dim)`` float32 unit rows, each a random centre plus Gaussian noise of norm about ``spread``."""
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = centres[rng.integers(0, len(centres), m)]
        x = x + rng.standard_normal((m, dim), dtype=np.float32) * (spread / np.sqrt(dim))
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def latency(index: Any, queries: np.ndarray, k: int) -> dict[str, float]:
    """Per-query latency percentiles (ms), one query per call."""
    times = []
    for q in queries:
        t = time.perf_counter()
        index.search(q[None], k)
        times.append((time.perf_counter() - t) * 1000)
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99))}


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found.tolist(), truth.tolist(), strict=True)]))


def run_size(n: int, dim: int, args: argparse.Namespace, rng: np.random.Generator) -> dict[str, Any]:
    say(f"n={n}: generating vectors")
    if args.distribution == "clustered":
        centres = random_unit(args.clusters, dim, rng)
        x = clustered_unit(n, dim, rng, centres, args.spread)
        queries = clustered_unit(args.queries, dim, rng, centres, args.spread)
    else:
        x = random_unit(n, dim, rng)
        queries = random_unit(args.queries, dim, rng)
    result: dict[str, Any] = {
        "n": n,
        "dim": dim,
        "distribution": args.distribution,
        "queries": args.queries,
        "k": args.k,
    }
    truth = None
    configs = [
        ("exact", "flat", {}, "", []),
        (
            "ivf",
            "ivf",
            {"nprobe": args.nprobe[0], "nlist": min(int(4 * np.sqrt(n)), args.max_nlist)},
            "nprobe",
            args.nprobe,
        ),
        (
            "hnsw",
            "hnsw",
            {"hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction, "ef_search": args.ef_search[0]},
            "efSearch",
            args.ef_search,
        ),
    ]
    for name, kind, options, knob, values in configs:
        if kind == "hnsw" and n > args.hnsw_max_n:
            say(
                f"n={n} hnsw: skipped (n > --hnsw-max-n {args.hnsw_max_n}: the build alone takes too long on this machine)"  # noqa: E501
            )
            result[name] = {"skipped": f"n > --hnsw-max-n {args.hnsw_max_n}"}
            continue
        t = time.perf_counter()
        index = build_index(x, kind, seed=args.seed, **options)  # type: ignore[arg-type]
        build_s = time.perf_counter() - t
        for value in values or [None]:
            if knob == "nprobe":
                index.nprobe = value
            elif knob == "efSearch":
                index.hnsw.efSearch = value
            lat = latency(index, queries[: args.latency_queries], args.k)
            t = time.perf_counter()
            _, found = index.search(queries, args.k)
            batch_qps = len(queries) / (time.perf_counter() - t)
            if truth is None:
                truth = found
            label = f"{name} {knob}={value}" if knob else name
            row = {
                "build_s": round(build_s, 2),
                **{k: round(v, 3) for k, v in lat.items()},
                "batch_qps": round(batch_qps, 1),
                f"recall@{args.k}_vs_exact": round(recall(found, truth), 4),
                "options": {**options, **({knob: value} if knob else {})},
            }
            result[label] = row
            say(f"n={n} {label}: {row}")
        del index
    return result


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
            lines.append(
                f"| {dist} | {res['n']:,} | {name} | {r['build_s']} | {r['p50_ms']} | {r['p99_ms']} | {r['batch_qps']} | {r[f'recall@{k}_vs_exact']} |"  # noqa: E501
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--append", action="store_true", help="add these sizes to the results already in --out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/search_speed.json")
    args = p.parse_args()
    seed_all(args.seed)
    rng = np.random.default_rng(args.seed)
    results: list[dict[str, Any]] = []
    if args.append and Path(args.out).is_file():
        rerun = {(n, args.distribution) for n in args.sizes}
        previous = json.loads(Path(args.out).read_text())["results"]
        results = [r for r in previous if (r["n"], r.get("distribution", "uniform")) not in rerun]
    for n in args.sizes:
        results.append(run_size(n, args.dim, args, rng))
        write_json(
            args.out, {"machine": machine(), "args": vars(args), "results": results, "table": table(results, args.k)}
        )
    print(table(results, args.k))


if __name__ == "__main__":
    main()
