"""``multimodal search``: query an index by text or by photo; prints one JSON line per result."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from multimodal.errors import UserError

HIDDEN_COLUMNS = {"image_path"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
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
    p.add_argument("--show", nargs="*", default=None, help="metadata columns to print (default: all stored at export)")
    p.add_argument("--device", default="cpu", help="torch device for the query towers")
    return p


def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    if args.text is not None and not args.text.strip():
        raise UserError("empty query text")
    if args.image is not None and not Path(args.image).is_file():
        raise UserError(f"query image not found: {args.image}")
    from multimodal.search.index import load_index
    from multimodal.search.query import QueryEncoder, more_like, search

    index = load_index(args.index)
    if args.k < 1 or args.k > index.index.ntotal:
        raise UserError(
            f"k={args.k} is outside 1..{index.index.ntotal} (the index holds {index.index.ntotal} products)"
        )
    if args.like is not None:
        print_results(more_like(index, args.like, args.k), args.show)
        return
    encoder = QueryEncoder(index, args.device)
    print_results(search(index, encoder, args.text, args.image, args.k, args.rerank), args.show)


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
