"""The training levers' results in retrieval quality: each lever variant's dense search over the whole catalogue
beside the retriever it varies (same seeds), as a table of each query set's headline metric and as ratios."""

from __future__ import annotations

from typing import Any

from benchmarks.common import ratio
from benchmarks.quality.retrieval_levers import base_of
from benchmarks.quality.retrieval_peer_report import LABELS, cell, system_name
from benchmarks.quality.retrieval_queries import HEADLINE


def lever_variants(whole: dict[str, Any]) -> list[str]:
    """The variants trained with a lever (their names carry it: ``fused + views``)."""
    return [v for v in whole["variants"] if base_of(v) != v]


def lever_table(whole: dict[str, Any]) -> str:
    """Dense search by each retriever, with and without each lever: each query set's headline metric, mean (min-max)
    over seeds ('' when no lever ran)."""
    if not lever_variants(whole):
        return ""
    scores, sets = whole["summary"], {n: HEADLINE[info["kind"]] for n, info in whole["query_sets"].items()}
    lines = [
        "Training levers: dense search over the whole catalogue, each lever alone and all together beside the "
        "retriever without them (same seeds):",
        "",
        "| retriever | " + " | ".join(f"{s} {LABELS[m]}" for s, m in sets.items()) + " |",
        "|---|" + "---|" * len(sets),
    ]
    for variant in whole["variants"]:
        dense = scores[system_name("dense", variant)]
        lines.append(f"| {variant} | " + " | ".join(cell(dense[s][m]) for s, m in sets.items()) + " |")
    return "\n".join(lines)


def lever_ratios(whole: dict[str, Any]) -> dict[str, float | None]:
    """Each lever variant's dense headline metric of each query set over the retriever without levers (and, for
    ``multi_positive``, over ``views``, the lever it adds to)."""
    scores, out = whole["summary"], {}
    for variant in lever_variants(whole):
        base = base_of(variant)
        references = [base]
        if variant == f"{base} + multi_positive" and f"{base} + views" in whole["variants"]:
            references.append(f"{base} + views")
        for name, info in whole["query_sets"].items():
            m = HEADLINE[info["kind"]]
            for reference in references:
                value = scores[system_name("dense", variant)][name][m]["mean"]
                out[f"levers, {name} {LABELS[m]}: dense {variant} / {reference}"] = ratio(
                    value, scores[system_name("dense", reference)][name][m]["mean"]
                )
    return out


def zero_shot_table(results: dict[str, Any]) -> str:
    """Zero-shot tagging of the test photos through each retriever trained with the first seed ('' when none)."""
    by_variant = results.get("zero_shot_by_variant")
    if not by_variant:
        return ""
    attributes = list(next(iter(by_variant.values())))
    lines = [
        "Zero-shot tagging through each retriever (test photos through its photo projection, against the query "
        "tower's vector of each value seen in training; first seed; accuracy):",
        "",
        "| retriever | " + " | ".join(attributes) + " |",
        "|---|" + "---|" * len(attributes),
    ]
    lines += [f"| {v} | " + " | ".join(f"{acc[a]:.3f}" for a in attributes) + " |" for v, acc in by_variant.items()]
    return "\n".join(lines)
