"""``multimodal index``: a FAISS index over an embedding export (exact by default, IVF / HNSW with a recall check)."""

from __future__ import annotations

import argparse
import json


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="multimodal index", description="Build a FAISS inner-product index over an export folder."
    )
    p.add_argument("export", help="folder written by `multimodal export`")
    p.add_argument("--out", required=True, help="index folder to write")
    p.add_argument(
        "--kind",
        choices=("flat", "ivf", "hnsw"),
        default="flat",
        help="flat = exact (default); ivf / hnsw = approximate",
    )
    p.add_argument("--nlist", type=int, default=None, help="IVF cells (default 4*sqrt(N))")
    p.add_argument("--nprobe", type=int, default=16, help="IVF cells searched per query (default 16)")
    p.add_argument("--hnsw-m", type=int, default=32, help="HNSW neighbours per node (default 32)")
    p.add_argument("--ef-search", type=int, default=64, help="HNSW search beam (default 64)")
    p.add_argument("--check-queries", type=int, default=1000, help="catalogue vectors used to check recall vs exact")
    p.add_argument("--min-recall", type=float, default=None, help="fail when recall@10 vs exact is below this")
    return p


def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    from multimodal.search.index import build_from_export

    options: dict = {}
    if args.kind == "ivf":
        options = {"nlist": args.nlist, "nprobe": args.nprobe}
    elif args.kind == "hnsw":
        options = {"hnsw_m": args.hnsw_m, "ef_search": args.ef_search}
    info = build_from_export(args.export, args.out, args.kind, args.check_queries, args.min_recall, **options)
    summary = {k: info[k] for k in ("kind", "dim", "count", "build_s") if k in info}
    if "recall@10_vs_exact" in info:
        summary["recall@10_vs_exact"] = info["recall@10_vs_exact"]
    print(json.dumps({"index": args.out, **summary}))
