"""The whole-catalogue results of retrieval quality: each trained retriever's seeds summed up as mean and range, one
table with BM25, dense and hybrid search side by side, the peers' published numbers beside it as context, and the
ratios to BM25."""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.common import ratio
from benchmarks.quality.retrieval_peer_eval import BM25
from benchmarks.quality.retrieval_queries import HEADLINE, QuerySet

SYSTEMS = ("dense", "hybrid RRF", "hybrid weighted", "hybrid default")
LABELS = {"recall@1": "R@1", "recall@10": "R@10", "precision@1": "P@1", "precision@10": "P@10", "mrr": "MRR",
          "ndcg@10": "nDCG@10"}  # fmt: skip
PEER_GALLERY = "other gallery (Myntra, 44k products), zero-shot"
# Published by the peers on the Myntra catalogue, by the query set of this benchmark's defaults they correspond to.
PEER_COLUMNS = {
    "sub-category->product P@1": ("subCategory", "precision@1"),
    "articleType (fine category)->product P@1": ("articleType", "precision@1"),
    "colour->product P@1": ("baseColour", "precision@1"),
    "text->image R@1": ("title", "recall@1"),
}
PEERS = {"Marqo-FashionSigLIP": (0.711, 0.704, 0.587, 0.179), "FashionCLIP 2.0": (0.600, 0.634, 0.413, 0.122)}


def system_name(system: str, variant: str) -> str:
    return f"{system}, {variant}"


def summary(
    sets: list[QuerySet], bm25: dict[str, dict[str, float]], runs: list[dict[str, Any]], variants: list[str]
) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """``{system: {query set: {metric: {"mean", "min", "max"}}}}`` over the seeds' runs; BM25 (no seed) first.

    Args:
        sets: the query sets.
        bm25: BM25's ``{query set: {metric: value}}``.
        runs: one per seed, ``{"seed", "fusion_weight": {variant: w}, "scores": {system: {set: {metric: v}}}}``.
        variants: the trained retrievers, in column order.
    """
    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {
        BM25: {s.name: {m: {"mean": v, "min": v, "max": v} for m, v in bm25[s.name].items()} for s in sets}
    }
    for system in SYSTEMS:
        for variant in variants:
            name = system_name(system, variant)
            out[name] = {}
            for s in sets:
                values = {m: [run["scores"][name][s.name][m] for run in runs] for m in s.metrics}
                out[name][s.name] = {m: {"mean": float(np.mean(v)), "min": float(np.min(v)), "max": float(np.max(v))}
                                     for m, v in values.items()}  # fmt: skip
    return out


def cell(value: dict[str, float]) -> str:
    """``mean (min-max)``, or the mean alone where the seeds agree (or there is one)."""
    if value["max"] - value["min"] < 5e-4:
        return f"{value['mean']:.3f}"
    return f"{value['mean']:.3f} ({value['min']:.3f}-{value['max']:.3f})"


def table(whole: dict[str, Any]) -> str:
    """The whole-catalogue table (query sets x metrics down, searches across) and the peers' published numbers."""
    scores = whole["summary"]
    systems = list(scores)
    seeds = ", ".join(str(r["seed"]) for r in whole["runs"])
    lines = [
        f"Whole catalogue as the gallery ({whole['gallery']} products; retrievers trained on the train split; "
        f"mean (min-max) over seeds {seeds}):",
        "",
        "| queries | metric | " + " | ".join(systems) + " |",
        "|---|---|" + "---|" * len(systems),
    ]
    for name, info in whole["query_sets"].items():
        for m in info["metrics"]:
            lines.append(f"| {name} -> product ({info['queries']}) | {LABELS[m]} | "
                         + " | ".join(cell(scores[sys][name][m]) for sys in systems) + " |")  # fmt: skip
    weights = "; ".join(f"{v}: {[r['fusion_weight'][v] for r in whole['runs']]}" for v in whole["variants"])
    lines += ["", f"hybrid weighted: the dense share chosen on the validation split, by seed ({weights})."]
    defaults = "; ".join(f"{v}: {[r['hybrid_default'][v]['name'] for r in whole['runs']]}" for v in whole["variants"])
    lines += [f"hybrid default: what `multimodal index --lexical` tunes and stores, by seed ({defaults})."]
    lines += peer_table(scores, whole["variants"])
    return "\n".join(lines)


def peer_table(scores: dict[str, Any], variants: list[str]) -> list[str]:
    """The peers' published numbers, marked as another gallery, beside this run's matching cells."""
    lines = ["", f"Published by the peers: {PEER_GALLERY}; context only, not the gallery above.", "",
             "| model | " + " | ".join(PEER_COLUMNS) + " |", "|---|" + "---|" * len(PEER_COLUMNS)]  # fmt: skip
    for peer, values in PEERS.items():
        lines.append(f"| {peer} ({PEER_GALLERY}) | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    for name in [BM25, *(system_name("dense", v) for v in variants)]:
        row = [cell(scores[name][s][m]) if s in scores[name] else "-" for s, m in PEER_COLUMNS.values()]
        where = "this catalogue" if name == BM25 else "this catalogue, trained on its train split"
        lines.append(f"| this run: {name} ({where}) | " + " | ".join(row) + " |")
    return lines


def published() -> dict[str, Any]:
    """The peers' published numbers as the result file keeps them."""
    scores = {peer: dict(zip(PEER_COLUMNS, values, strict=True)) for peer, values in PEERS.items()}
    return {"gallery": PEER_GALLERY, "scores": scores}


def ratios(whole: dict[str, Any]) -> dict[str, float | None]:
    """Each query set's headline metric (R@1, P@1 or nDCG@10) of dense and weighted-hybrid search over BM25's."""
    scores, out = whole["summary"], {}
    for name, info in whole["query_sets"].items():
        m = HEADLINE[info["kind"]]
        bm25 = scores[BM25][name][m]["mean"]
        for variant in whole["variants"]:
            for system in ("dense", "hybrid weighted", "hybrid default"):
                label = f"whole catalogue, {name} {LABELS[m]}: {system} {variant} / BM25"
                out[label] = ratio(scores[system_name(system, variant)][name][m]["mean"], bm25)
    return out
