"""A retriever's evaluation from one ranking per direction: the scores it logs (recall@K, median rank) and the
recall@K curve the model card plots."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from multimodal.model_card.report import CurveReport, EvaluationReport
from multimodal.search.metrics import ranks_of_matches, scores_from_ranks

CURVE_KS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 15, 20, 30, 50, 100, 200, 500, 1000)


def recall_evaluation(
    text: Tensor, products: Tensor, ks: Sequence[int] = (1, 5, 10), chunk: int = 1024
) -> tuple[dict[str, float], EvaluationReport]:
    """Text->product (``t2p_``) and product->text (``p2t_``) recall@K and median rank, as
    :func:`multimodal.search.metrics.retrieval_scores`, and their recall@K curves; row i matches row i.

    Args:
        text: ``(N, E)`` query vectors.
        products: ``(N, E)`` product vectors.
        ks: the cut-offs of the scores.
        chunk: queries ranked at a time.
    """
    t2p, p2t = ranks_of_matches(text, products, chunk=chunk), ranks_of_matches(products, text, chunk=chunk)
    scores = {**scores_from_ranks(t2p, ks, "t2p_"), **scores_from_ranks(p2t, ks, "p2t_")}
    x = [k for k in CURVE_KS if k <= max(len(t2p), 1)]
    series = {
        "text -> product": [float((t2p < k).float().mean()) for k in x],
        "product -> text": [float((p2t < k).float().mean()) for k in x],
    }
    title = f"recall@K: share of the {len(t2p)} queries whose match is in the top K"
    return scores, EvaluationReport(curves=[CurveReport("recall_at_k", title, "K", x, series)])
