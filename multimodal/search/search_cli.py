"""``multimodal search``: query an index by text or by photo; prints one JSON line per result."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from multimodal.arguments import Parser
from multimodal.errors import UserError

HIDDEN_COLUMNS = {"image_path"}


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="multimodal search",
        description="Search an index by text or by photo; prints JSON lines (rank, id, score, metadata).",
    )
    p.add_argument("index", help="folder written by `multimodal index`")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--text", help="text query")
    q.add_argument("--image", help="path of a query photo")
    q.add_argument("--like", metavar="ID", help="more like this product: its stored vector is the query")
    p.add_argument("-k", type=int, default=10, help="results to print (default 10)")
    p.add_argument(
        "--rerank", type=int, default=0, metavar="N", help="re-order the top N with the checkpoint's re-ranker"
    )
    p.add_argument(
        "--mode",
        choices=("dense", "lexical", "hybrid"),
        default=None,
        help="dense = vectors; lexical = BM25 (index built with --lexical); hybrid = both, fused (default: hybrid, "
        "or what `multimodal index` tuned, for a text query on an index with BM25; dense otherwise)",
    )
    p.add_argument(
        "--fusion",
        choices=("rrf", "weighted"),
        default=None,
        help="hybrid: reciprocal-rank fusion or a weighted sum of normalised scores (default: the index's tuned "
        "fusion, else rrf)",
    )
    p.add_argument(
        "--weight",
        type=float,
        default=None,
        help="hybrid --fusion weighted: the dense share, 0..1 (default: the index's tuned share, else 0.5)",
    )
    p.add_argument(
        "--where",
        default=None,
        metavar="EXPR",
        help="metadata filter, e.g. \"gender = 'Men' AND year >= 2012\" (=, !=, <, <=, >, >=, IN, AND, OR, NOT)",
    )
    p.add_argument("--show", nargs="*", default=None, help="metadata columns to print (default: all stored at export)")
    p.add_argument("--device", default="cpu", help="torch device for the query towers")
    p.add_argument(
        "--runtime",
        choices=("torch", "onnx", "onnx-int8"),
        default="torch",
        help="query towers on PyTorch (default) or ONNX Runtime (the checkpoint is exported once to the cache)",
    )
    return p


def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    if args.text is not None and not args.text.strip():
        raise UserError("empty query text")
    if args.image is not None and not Path(args.image).is_file():
        raise UserError(f"query image not found: {args.image}")
    from multimodal.lite.search import encoder_for
    from multimodal.search.index import load_index
    from multimodal.search.query import Query, check_query, search_many

    index = load_index(args.index)
    image = Path(args.image) if args.image is not None else None
    query = Query(args.text, image, args.like, args.k, args.rerank, args.mode, args.where, args.fusion, args.weight)
    query = check_query(index, query, can_rerank=True)  # a mistake is reported before the checkpoint is loaded
    needs_model = args.like is None and (query.mode != "lexical" or args.rerank)
    encoder = encoder_for(index, args.runtime) if needs_model else None  # torch-free, from an ONNX export
    if needs_model and encoder is None:
        from multimodal.search.query import QueryEncoder

        encoder = QueryEncoder(index, args.device, args.runtime)
    print_results(search_many(index, encoder, [query])[0], args.show)


def print_results(results: list[dict[str, Any]], show: list[str] | None) -> None:
    """One JSON line per result: rank, id, score (and rerank_score), then the metadata columns."""
    for rank, res in enumerate(results, 1):
        meta = {c: v for c, v in res.items() if c not in ("id", "score", "rerank_score") and c not in HIDDEN_COLUMNS}
        if show is not None:
            meta = {c: meta.get(c) for c in show}
        line = {"rank": rank, "id": res["id"], "score": round(res["score"], 6)}
        if "rerank_score" in res:
            line["rerank_score"] = round(res["rerank_score"], 6)
        sys.stdout.write(json.dumps({**line, **meta}, ensure_ascii=False) + "\n")
