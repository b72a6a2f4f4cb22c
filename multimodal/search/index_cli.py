"""``multimodal index``: a FAISS index over an embedding export (exact by default; IVF / HNSW / IVF-PQ, chosen by
``--index auto`` from the size and a memory budget and tuned to a target recall), with an optional BM25 index, in
one or several shards; or a live update of an existing index (``--add`` / ``--remove``).

An export that holds an id on two rows is refused by both; an update also refuses an export of another model or
with other metadata columns than the index (:mod:`multimodal.search.updates`)."""

from __future__ import annotations

import argparse
import json

from multimodal.arguments import Parser

KIND_CHOICES = ("flat", "ivf", "hnsw", "ivfpq", "auto")
TUNE_QUERIES = 200  # --tune-hybrid's default


def _search_options(p: argparse.ArgumentParser) -> None:
    """The options of what search reads from the build: BM25 columns, the tuned hybrid default, the vector width."""
    p.add_argument("--lexical", default=None, metavar="COLUMNS", help="comma-separated text columns for BM25")
    p.add_argument(
        "--tune-hybrid",
        "--tune_hybrid",
        dest="tune_hybrid",
        type=int,
        default=None,
        metavar="N",
        help=f"with --lexical: score dense, BM25 and their fusions on N shopper-like queries made from the catalogue "
        f"and store the best as search's default (default {TUNE_QUERIES}; 0: off, the default stays RRF)",
    )
    p.add_argument(
        "--tune-attributes",
        "--tune_attributes",
        dest="tune_attributes",
        default=None,
        metavar="COLUMNS",
        help="comma-separated attribute columns whose values make the tuning's phrase queries (default: found in "
        "the products table; '' for none)",
    )
    p.add_argument(
        "--dim",
        type=int,
        default=None,
        help="keep the first DIM dimensions of each vector, L2-renormalised (Matryoshka); queries are cut alike",
    )


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="multimodal index",
        description="Build a FAISS inner-product index over an export folder, or update one in place "
        "(--add / --remove).",
        epilog="examples:\n"
        "  multimodal index emb/ --out index/ --index auto --memory_budget 4GB --target_recall 0.95 "
        "--lexical title,brand\n"
        "  multimodal index index/ --add emb_new/ --remove ids_gone.txt",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", help="export folder written by `multimodal export` (or, with --add/--remove, an index)")
    p.add_argument("--out", help="index folder to write (a new build)")
    p.add_argument(
        "--index",
        "--kind",
        dest="kind",
        choices=KIND_CHOICES,
        default="flat",
        help="flat = exact (default); ivf / hnsw / ivfpq = approximate; auto = chosen from the vector count and "
        "--memory_budget, tuned to --target_recall",
    )
    p.add_argument("--memory_budget", "--memory-budget", default=None, help="memory for the index, e.g. 4GB (auto)")
    p.add_argument(
        "--target_recall",
        "--target-recall",
        type=float,
        default=None,
        help="tune nprobe / efSearch to this recall@10 vs exact on held-out queries (default 0.95 with auto)",
    )
    _search_options(p)
    p.add_argument("--shards", type=int, default=1, help="split the products by id hash into N FAISS indexes")
    p.add_argument("--nlist", type=int, default=None, help="IVF cells (default 4*sqrt(N))")
    p.add_argument("--nprobe", type=int, default=16, help="IVF cells searched per query (default 16)")
    p.add_argument("--hnsw-m", type=int, default=32, help="HNSW neighbours per node (default 32)")
    p.add_argument("--ef-search", type=int, default=64, help="HNSW search beam (default 64)")
    p.add_argument("--pq-m", type=int, default=32, help="IVF-PQ bytes per vector (default 32)")
    p.add_argument("--opq", action="store_true", help="IVF-PQ: learn an OPQ rotation first")
    p.add_argument("--check-queries", type=int, default=1000, help="held-out catalogue vectors used to check recall")
    p.add_argument("--min-recall", type=float, default=None, help="fail when recall@10 vs exact is below this")
    p.add_argument(
        "--add",
        default=None,
        metavar="EXPORT",
        help="update: add (or replace) the products of an export made with the index's checkpoint and --columns",
    )
    p.add_argument("--remove", default=None, metavar="IDS_FILE", help="update: remove the ids listed, one a line")
    return p


def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    from multimodal.errors import UserError

    if args.add is not None or args.remove is not None:
        if args.out is not None:
            raise UserError("--add / --remove update the index given as SOURCE in place; drop --out")
        if args.dim is not None:
            raise UserError("--dim applies to a build (--out): an update keeps the index's width")
        from multimodal.search.updates import read_ids, update_index

        removing = read_ids(args.remove) if args.remove is not None else None
        print(json.dumps({"index": args.source, **update_index(args.source, args.add, removing)}))
        return
    if args.out is None:
        raise UserError("--out is required to build an index (or give --add / --remove to update SOURCE)")
    from multimodal.search.build import build_from_export
    from multimodal.search.choice import parse_bytes

    options: dict = {}
    if args.kind in ("ivf", "ivfpq"):
        options = {"nlist": args.nlist, "nprobe": args.nprobe}
        if args.kind == "ivfpq":
            options.update(pq_m=args.pq_m, opq=args.opq)
    elif args.kind == "hnsw":
        options = {"hnsw_m": args.hnsw_m, "ef_search": args.ef_search}
    target = args.target_recall if args.target_recall is not None or args.kind != "auto" else 0.95
    if target is not None and not 0 < target <= 1:
        raise UserError(f"--target_recall {target} is outside (0, 1]")
    lexical = [c.strip() for c in args.lexical.split(",") if c.strip()] if args.lexical else None
    tune, attributes = _tuning(args, lexical)
    info = build_from_export(
        args.source,
        args.out,
        args.kind,
        args.check_queries,
        args.min_recall,
        shards=args.shards,
        lexical=lexical,
        memory_budget=parse_bytes(args.memory_budget) if args.memory_budget else None,
        target_recall=target,
        dim=args.dim,
        tune_hybrid=tune,
        tune_attributes=attributes,
        **options,
    )
    print(json.dumps({"index": args.out, **_summary(info)}))


def _summary(info: dict) -> dict:
    """What ``multimodal index`` prints of a build's ``index.json``."""
    keys = ("kind", "dim", "cut_from", "count", "shards", "build_s", "recall@10_vs_exact", "target_met", "lexical")
    summary = {k: info[k] for k in keys if info.get(k) not in (None, [])}
    if "choice" in info:
        summary["reason"] = info["choice"]["reason"]
    if "tuned" in info:
        summary.update({k: v for k, v in info["tuned"].items() if k != "sweep"})
    if "hybrid" in info:  # the default of `multimodal search` on this index
        summary["hybrid"] = {k: info["hybrid"][k] for k in ("mode", "fusion", "weight", "score", "queries", "routes")
                             if k in info["hybrid"]}  # fmt: skip
    return summary


def _tuning(args: argparse.Namespace, lexical: list[str] | None) -> tuple[int, list[str] | None]:
    """The shopper queries that tune hybrid search, and the attribute columns given (None: found)."""
    from multimodal.errors import UserError

    if args.tune_hybrid is not None and args.tune_hybrid < 0:
        raise UserError(f"--tune-hybrid {args.tune_hybrid}: give a number of queries, 0 for none")
    if not lexical and (args.tune_hybrid or args.tune_attributes is not None):
        raise UserError("--tune-hybrid / --tune-attributes tune the fusion of dense and BM25 search: add --lexical")
    attributes = None
    if args.tune_attributes is not None:
        attributes = [c.strip() for c in args.tune_attributes.split(",") if c.strip()]
    return (TUNE_QUERIES if args.tune_hybrid is None else args.tune_hybrid), attributes
