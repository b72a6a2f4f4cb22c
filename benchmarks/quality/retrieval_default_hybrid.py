"""The hybrid search that ``multimodal index --lexical`` makes an index's default, for each retriever that retrieval
quality trains: the library's own tuning (:mod:`multimodal.search.hybrid_tuning`) run over the benchmark's gallery,
then the winner scored on the query sets as ``hybrid default``: each query takes its route's winner, as
``multimodal search`` does (:func:`multimodal.search.query.route_of`).

The tuning is what an index build does with its defaults (``--tune-hybrid 200``, seed 0). It scores nDCG@10 of RRF,
weighted fusion at eleven dense shares, dense alone and BM25 alone. The queries are shopper-like queries made from
the catalogue itself (:mod:`multimodal.search.shopper_queries`): runs of two or more title words
(every product holding them an answer, the one they were copied from worth twice as much), and values of
the attribute columns found among the product columns. Like an index build, the tuning reads the catalogue's
attribute columns. So some tuning queries are of the same kind as the evaluation's (a colour, a type); they never
read the evaluation's queries or which products answer them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from benchmarks.quality.retrieval_data import Encoded, encode_pooled
from multimodal.search.hybrid_tuning import configurations, means, ndcg, routed, winner
from multimodal.search.retriever import ProductRetriever
from multimodal.search.shopper_queries import (
    ShopperQuery,
    attribute_columns,
    attribute_terms,
    query_route,
    shopper_queries,
)

TUNING_QUERIES, TUNING_SEED = 200, 0  # `multimodal index --tune-hybrid`'s defaults
Hits = list[tuple[int, float]]


def tuning_queries(data: Encoded, columns: list[str]) -> tuple[list[ShopperQuery], set[str]]:
    """The shopper-like queries an index of the catalogue (titles as BM25's text, ``columns`` stored) is tuned on,
    and the words of its attribute values (they route a query: ``multimodal.search.shopper_queries.query_route``)."""
    products = pd.DataFrame({"title": data.titles, **{c: [r.texts.get(c) for r in data.records] for c in columns}})
    found = attribute_columns(products, ["title"], None)
    queries = shopper_queries(products, ["title"], found, TUNING_QUERIES, TUNING_SEED)
    return queries, attribute_terms(products, found)


def ranked(options: dict[str, Any], sim: np.ndarray, top: np.ndarray, lexical: tuple[np.ndarray, np.ndarray]) -> Hits:
    """One query's hits under a configuration's query options (the search's own ``fuse``): ``sim`` its dense scores
    over the gallery, ``top`` its dense candidates, ``lexical`` its BM25 ``(scores, rows)``."""
    from multimodal.search.hits import fuse
    from multimodal.search.query import Query

    query = Query(text="", mode=options["mode"], fusion=options.get("fusion"), weight=options.get("weight"))
    dense = [(int(r), float(sim[r])) for r in top]
    return fuse(query, dense, [(int(r), float(s)) for s, r in zip(*lexical, strict=True)])


Tuning = tuple[list[ShopperQuery], set[str]]  # the tuning queries and the words that route a query


def tune(data: Encoded, model: ProductRetriever, gallery: np.ndarray, lexical: Any, tuning: Tuning) -> dict[str, Any]:
    """The record the library would store for ``model``'s index: the single winner's query options and ``name``,
    each configuration's ``scores``, and the winner of each route (``routes``) with the ``attribute_terms``.

    Args:
        data: the encoded catalogue (its text tower encodes the tuning queries).
        model: the trained retriever (its query projection).
        gallery: the gallery's product vectors ``(N, E)``.
        lexical: the gallery's BM25 index (``search(texts, k)``).
        tuning: the tuning queries and the words of the attribute values (:func:`tuning_queries`).
    """
    from multimodal.search.hits import HYBRID_DEPTH

    queries, terms = tuning
    texts = [q.text for q in queries]
    with torch.inference_mode():
        pooled = encode_pooled(texts, data.text_tower, label="hybrid tuning queries")
        vectors = torch.nn.functional.normalize(model.text_proj(pooled), dim=-1)
    sims = vectors.numpy() @ gallery.T
    lex_scores, lex_rows = lexical.search(texts, HYBRID_DEPTH)
    per_query = {name: np.zeros(len(queries)) for name, _ in configurations()}
    for i, q in enumerate(queries):
        top = np.argsort(-sims[i], kind="stable")[:HYBRID_DEPTH]
        keep = lex_rows[i] >= 0
        lex = (lex_scores[i][keep], lex_rows[i][keep])
        for name, options in configurations():
            per_query[name][i] = ndcg([row for row, _ in ranked(options, sims[i], top, lex)], q.relevant, q.known)
    scores = means(per_query)
    routes = routed(per_query, [query_route(t, terms, lexical.vocabulary) for t in texts])
    return {**winner(per_query), "scores": scores, "queries": len(queries), "routes": routes,
            "attribute_terms": sorted(terms)}  # fmt: skip
