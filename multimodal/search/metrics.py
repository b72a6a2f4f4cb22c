"""Retrieval metrics computed in query chunks: memory O(N x chunk), never the N x N similarity matrix.

torchmetrics' retrieval metrics take one score per (query, document) pair, i.e. the full N x N matrix for an
all-pairs evaluation, so ranks are computed here chunk by chunk and only the rank of the true match is kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def ranks_of_matches(queries: Tensor, gallery: Tensor, targets: Tensor | None = None, chunk: int = 1024) -> Tensor:
    """0-based rank of each query's true match in the gallery, by inner product.

    Args:
        queries: ``(Nq, E)`` query vectors.
        gallery: ``(Ng, E)`` gallery vectors.
        targets: ``(Nq,)`` gallery row of each query's match; default ``arange(Nq)`` (row i matches row i).
        chunk: queries scored at a time; peak extra memory is ``chunk x Ng`` floats.

    Returns:
        ``(Nq,)`` long: how many gallery items score strictly higher than the match (ties count in its favour).
    """
    if targets is None:
        if queries.shape[0] != gallery.shape[0]:
            raise ValueError("without targets, queries and gallery must have the same number of rows")
        targets = torch.arange(queries.shape[0])
    ranks = torch.empty(queries.shape[0], dtype=torch.long)
    g = gallery.float()
    for start in range(0, queries.shape[0], chunk):
        q = queries[start : start + chunk].float()
        sim = q @ g.t()  # (chunk, Ng)
        t = targets[start : start + chunk].to(sim.device)
        true = sim.gather(1, t.unsqueeze(1))  # (chunk, 1)
        ranks[start : start + len(q)] = (sim > true).sum(1).cpu()
    return ranks


def scores_from_ranks(ranks: Tensor, ks: Sequence[int] = (1, 5, 10), prefix: str = "") -> dict[str, float]:
    """recall@K (share of queries whose match is in the top K) and the median 1-based rank."""
    out = {f"{prefix}recall@{k}": float((ranks < k).float().mean()) for k in ks}
    out[f"{prefix}median_rank"] = float((ranks + 1).float().median())
    return out


def retrieval_scores(
    text: Tensor, products: Tensor, ks: Sequence[int] = (1, 5, 10), chunk: int = 1024
) -> dict[str, float]:
    """Text->product (``t2p_``) and product->text (``p2t_``) recall@K and median rank; row i matches row i."""
    t2p = scores_from_ranks(ranks_of_matches(text, products, chunk=chunk), ks, "t2p_")
    p2t = scores_from_ranks(ranks_of_matches(products, text, chunk=chunk), ks, "p2t_")
    return {**t2p, **p2t}
