"""Retrieval quality's training and scoring: recall of the dense vectors, of the re-ranker over their top list, and
of BM25 and its hybrid fusions with dense search (ties scored as expected over a random order)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from benchmarks.quality.retrieval_data import batch_of
from encoders.types import Features
from multimodal.search.metrics import ranks_of_matches, scores_from_ranks
from multimodal.search.retriever import ProductRetriever


def train(model: ProductRetriever, loader: DataLoader, args: argparse.Namespace) -> float:
    """Fit ``model`` for ``--epochs`` on ``loader``'s batches; returns the last training loss."""
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, loader)
    return float(trainer.callback_metrics.get("train/loss", torch.tensor(float("nan"))))


@torch.inference_mode()
def evaluate(
    model: ProductRetriever, rows: list[int], n: int, ids: list[str], rerank: int = 0, combine: bool = False
) -> dict[str, float]:
    model.eval()
    batch = batch_of(rows, n, ids)
    query = model.embed_text(batch["input_ids"], batch["attention_mask"])
    product = model.embed_products(batch)
    t2p = ranks_of_matches(query, product)
    p2t = ranks_of_matches(product, query)
    if rerank:
        vision = model.vision(batch["pixel_values"])
        text = model.text(batch["input_ids"], batch["attention_mask"])

        def pairs(photos: Sequence[int], titles: Sequence[int]) -> tuple[Features, Features]:
            return vision_rows(vision, photos), text_rows(text, titles)

        # A query q's candidates c are products for text->product and titles for product->text.
        t2p = reranked_ranks(model, query @ product.t(), t2p, rerank, lambda q, c: pairs(c, q), 256, combine)
        p2t = reranked_ranks(model, product @ query.t(), p2t, rerank, lambda q, c: pairs(q, c), 256, combine)
    return {**scores_from_ranks(t2p, prefix="t2p_"), **scores_from_ranks(p2t, prefix="p2t_")}


def vision_rows(f: Features, rows: Sequence[int]) -> Features:
    return Features(f.tokens[list(rows)], f.mask[list(rows)], f.pooled[list(rows)])


text_rows = vision_rows


def reranked_ranks(
    model: ProductRetriever,
    sim: Tensor,
    ranks: Tensor,
    depth: int,
    pairs: Any,
    chunk: int = 256,
    combine: bool = False,
) -> Tensor:
    """Reorder each query's top ``depth`` by the re-ranker; a match outside the top ``depth`` keeps its rank.

    With ``combine`` the order is by ITM logit + the contrastive logit (cosine / temperature) instead of ITM alone.
    """
    out = ranks.clone()
    top = sim.topk(depth, dim=1).indices  # (Q, depth)
    queries = [q for q in range(sim.shape[0]) if ranks[q] < depth]
    flat = [(q, c) for q in queries for c in top[q].tolist()]
    scores = []
    for start in range(0, len(flat), chunk):  # the re-ranker runs on batches of (query, candidate) pairs
        part = flat[start : start + chunk]
        scores.append(model.match_scores(*pairs([q for q, _ in part], [c for _, c in part])))
    if not flat:
        return out
    table = torch.cat(scores).view(len(queries), depth)
    if combine:
        table = table + model.logit_scale.exp() * sim[queries].gather(1, top[queries])
    for row, q in enumerate(queries):
        cands = top[q].tolist()
        out[q] = int((table[row] > table[row, cands.index(q)]).sum())
    return out


def rank_in(hits: list[tuple[int, float]], match: int) -> tuple[int, int] | None:
    """(items scoring higher than ``match``, items scoring the same, itself included) in a scored list; None when
    it is absent or scored 0 (not found)."""
    score = next((s for item, s in hits if item == match), 0.0)
    if score <= 0:
        return None
    return sum(s > score for _, s in hits), sum(s == score for _, s in hits)


def tie_aware_scores(ranks: list[tuple[int, int] | None], total: int) -> dict[str, float]:
    """recall@1/5/10 and median rank, expected over a random order of tied items: BM25 gives many products the
    same score (a two-word query), and counting ties in the match's favour would credit a 20-way tie as a hit."""
    pairs = [(total, 1) if r is None else r for r in ranks]
    out = {f"t2p_recall@{k}": float(np.mean([min(max((k - g) / e, 0.0), 1.0) for g, e in pairs])) for k in (1, 5, 10)}
    out["t2p_median_rank"] = float(np.median([g + (e + 1) / 2 for g, e in pairs]))
    return out


@torch.inference_mode()
def lexical_and_hybrid(
    model: ProductRetriever | None,
    rows: list[int],
    n: int,
    ids: list[str],
    queries: list[str],
    titles: list[str],
    full_titles: bool,
    weights: Sequence[float] = (0.5,),
) -> dict[str, dict[str, float]]:
    """text->product recall of BM25, of dense search (``model``; None: BM25 alone) and of their fusions, on
    ``queries`` (row i's answer is product i) over the test products' titles."""
    import pandas as pd

    from multimodal.search.lexical import LexicalIndex, reciprocal_rank_fusion, weighted_fusion
    from multimodal.search.query import HYBRID_DEPTH

    total = len(rows)
    lexical = LexicalIndex.build(pd.DataFrame({"title": titles}), ["title"])
    bm_scores, bm_rows = lexical.search(queries, total)
    lists = {
        "bm25": [
            [(int(r), float(s)) for r, s in zip(rr, ss, strict=True) if r >= 0]
            for rr, ss in zip(bm_rows, bm_scores, strict=True)
        ]
    }
    ranks: dict[str, list[tuple[int, int] | None]] = {
        "BM25 on the title": [rank_in(h, q) for q, h in enumerate(lists["bm25"])]
    }
    if model is not None:
        model.eval()
        idx = torch.tensor(rows) + (0 if full_titles else 2 * n)
        ones = torch.ones(len(rows), 1, dtype=torch.long)
        query = model.embed_text(idx[:, None], ones)
        product = model.embed_products(batch_of(rows, n, ids))
        sim = (query @ product.t()).numpy()
        ranks["dense"] = [(int((sim[q] > sim[q, q]).sum()), int((sim[q] == sim[q, q]).sum())) for q in range(total)]
        rrf: list[tuple[int, int] | None] = []
        weighted: dict[float, list[tuple[int, int] | None]] = {w: [] for w in weights}
        for q in range(total):
            top = np.argsort(-sim[q], kind="stable")[:HYBRID_DEPTH]
            lex = np.array([r for r, _ in lists["bm25"][q][:HYBRID_DEPTH]], dtype=np.int64)
            lex_s = np.array([s for _, s in lists["bm25"][q][:HYBRID_DEPTH]], dtype=np.float32)
            rrf.append(rank_in(reciprocal_rank_fusion([top, lex]), q))
            for w in weights:
                weighted[w].append(rank_in(weighted_fusion((sim[q, top], top), (lex_s, lex), w), q))
        ranks["hybrid (RRF)"] = rrf
        ranks.update({f"hybrid (weighted {w:g})": r for w, r in weighted.items()})
    return {name: tie_aware_scores(r, total) for name, r in ranks.items()}
