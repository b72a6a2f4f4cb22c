"""``multimodal search``: query an index by text or by photo; prints one JSON line per result."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from multimodal.errors import UserError
from multimodal.search_index import SearchIndex, load_index

HIDDEN_COLUMNS = {"image_path"}


class QueryEncoder:
    """The towers of the checkpoint named in an export manifest, turning text or photos into query vectors."""

    def __init__(self, info: dict[str, Any], device: str = "cpu") -> None:
        from multimodal.restore import restore
        from multimodal.tasks.retrieval import ProductRetriever

        export = info["export"]
        ckpt = Path(export["checkpoint"])
        if not ckpt.is_file():
            raise UserError(f"the checkpoint named by the export, {ckpt}, is missing")
        overrides = [
            "--data.manifest",
            export["data_manifest"],
            "--data.image_root",
            export["image_root"],
            "--data.num_workers",
            "0",
        ]
        self.restored = restore(ckpt, overrides, task=ProductRetriever)
        self.model: ProductRetriever = self.restored.model.to(device)
        self.device = device
        self.image_root = Path(export["image_root"])
        self.product_columns = self.model.product_columns or export.get("columns") or []
        self._checkpoint_sha = export.get("checkpoint_sha256")
        self.check_checkpoint(ckpt)

    def check_checkpoint(self, path: Path) -> None:
        """Refuse a checkpoint that changed since the export (its vectors would not match)."""
        from multimodal.export import file_sha256

        h = file_sha256(path)
        if self._checkpoint_sha and h != self._checkpoint_sha:
            raise UserError(f"{path} changed since the export (sha256 differs): re-run `multimodal export`")

    @torch.inference_mode()
    def text(self, query: str) -> np.ndarray:
        if not query or not query.strip():
            raise UserError("empty query text")
        enc = self.model.text.tokenize([query.strip()])
        return (
            self.model.embed_text(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))
            .float()
            .cpu()
            .numpy()
        )

    def pixels(self, path: Path) -> torch.Tensor:
        from multimodal.images import load_image

        return self.model.image_transform(False)(load_image(path)).unsqueeze(0).to(self.device)  # (1, 3, H, W)

    @torch.inference_mode()
    def image(self, path: Path) -> np.ndarray:
        return self.model.embed_image(self.pixels(path)).float().cpu().numpy()

    @torch.inference_mode()
    def rerank(self, products: list[dict[str, Any]], text: str | None, image: Path | None) -> list[float]:
        """Re-ranker scores of (query, candidate): a text query meets candidate photos, a photo candidate texts."""
        model = self.model
        if text is not None:
            paths = [p.get("image_path") for p in products]
            if any(p is None for p in paths):
                raise UserError("re-ranking a text query needs every candidate's photo; some have none")
            pixels = torch.cat([self.pixels(self.image_root / str(p)) for p in paths])
            enc = model.text.tokenize([text] * len(products))
        else:
            assert image is not None
            pixels = self.pixels(image).expand(len(products), -1, -1, -1)
            joined = [". ".join(str(p[c]) for c in self.product_columns if p.get(c) is not None) for p in products]
            enc = model.text.tokenize(joined)
        vision = model.vision(pixels)
        tokens = model.text(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))
        return model.match_scores(vision, tokens).float().cpu().tolist()


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


def search(
    index: SearchIndex, encoder: QueryEncoder, text: str | None, image: str | None, k: int, rerank: int = 0
) -> list[dict[str, Any]]:
    """Top-k products for one query, optionally re-ranked from the top ``rerank``."""
    if encoder.model.embed_dim != index.dim:
        raise UserError(
            f"the model embeds in {encoder.model.embed_dim} dimensions, the index holds {index.dim}: rebuild the index"
        )
    query = encoder.text(text) if text is not None else encoder.image(Path(str(image)))
    depth = max(k, rerank)
    if depth > index.index.ntotal:
        raise UserError(f"k={depth} is larger than the index ({index.index.ntotal} products)")
    scores, rows = index.search(query, depth)
    found = [(int(r), float(s)) for r, s in zip(rows[0], scores[0], strict=True) if r >= 0]
    records = index.products.iloc[[r for r, _ in found]].to_dict("records")
    results = [{"score": s, **rec} for (_, s), rec in zip(found, records, strict=True)]
    if rerank:
        matches = encoder.rerank(results, text, Path(str(image)) if image is not None else None)
        # ITM logit plus the contrastive logit (cosine / temperature): ITM alone was worse on the benchmark
        scale = float(encoder.model.logit_scale.detach().exp())
        for res, m in zip(results, matches, strict=True):
            res["rerank_score"] = m + scale * res["score"]
        results.sort(key=lambda r: -r["rerank_score"])
    return results[:k]


def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    if args.text is not None and not args.text.strip():
        raise UserError("empty query text")
    if args.image is not None and not Path(args.image).is_file():
        raise UserError(f"query image not found: {args.image}")
    index = load_index(args.index)
    if args.like is not None:
        print_results(more_like(index, args.like, args.k), args.show)
        return
    if args.k < 1 or args.k > index.index.ntotal:
        raise UserError(
            f"k={args.k} is outside 1..{index.index.ntotal} (the index holds {index.index.ntotal} products)"
        )
    encoder = QueryEncoder(index.info, args.device)
    print_results(search(index, encoder, args.text, args.image, args.k, args.rerank), args.show)


def more_like(index: SearchIndex, item_id: str, k: int) -> list[dict[str, Any]]:
    """The k products nearest to a catalogue product's own vector (the product itself left out)."""
    import faiss

    rows = index.products.index[index.products["id"].astype(str) == item_id].tolist()
    if not rows:
        raise UserError(f"product id '{item_id}' is not in the index")
    if isinstance(index.index, faiss.IndexIVF):
        index.index.make_direct_map()
    vector = index.index.reconstruct(rows[0])[None]
    scores, found = index.search(vector, min(k + 1, index.index.ntotal))
    records = index.products.iloc[found[0]].to_dict("records")
    results = [{"score": float(s), **rec} for s, rec in zip(scores[0], records, strict=True) if rec["id"] != item_id]
    return results[:k]


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
