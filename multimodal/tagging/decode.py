"""Head probabilities -> label names and scores per product (shared by the eager and the ONNX Runtime tagger)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor


def decode_probs(
    probs: dict[str, Tensor],
    vocabularies: dict[str, list[str]],
    tag_vocabularies: dict[str, list[str]],
    tag_threshold: float,
    top_k: int = 1,
) -> list[dict[str, Any]]:
    """Turn head probabilities into per-product label names and scores: ``<attribute>``, ``<attribute>_score``
    (and ``<attribute>_top``: ``[[label, p], ...]`` when ``top_k > 1``); ``<tag column>``: the tags above
    ``tag_threshold`` and ``<tag column>_scores`` their probabilities."""
    n = next(iter(probs.values())).shape[0]
    out: list[dict[str, Any]] = [{} for _ in range(n)]
    for name, vocab in vocabularies.items():
        score, idx = probs[name].float().topk(min(top_k, len(vocab)), dim=-1)
        for i in range(n):
            out[i][name] = vocab[idx[i, 0]]
            out[i][f"{name}_score"] = round(float(score[i, 0]), 6)
            if top_k > 1:
                out[i][f"{name}_top"] = [
                    [vocab[j], round(float(s), 6)] for j, s in zip(idx[i].tolist(), score[i].tolist(), strict=True)
                ]
    for name, vocab in tag_vocabularies.items():
        p = probs[f"tags/{name}"].float()
        for i in range(n):
            chosen = (p[i] > tag_threshold).nonzero().flatten().tolist()
            out[i][name] = [vocab[j] for j in chosen]
            out[i][f"{name}_scores"] = [round(float(p[i, j]), 6) for j in chosen]
    return out
