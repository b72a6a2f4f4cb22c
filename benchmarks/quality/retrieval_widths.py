"""Matryoshka widths in retrieval quality: the whole catalogue searched with a retriever's vectors cut to their first
1/1, 1/2, 1/4 and 1/8 of the dimensions (L2-renormalised, as ``export --dim`` and ``index --dim`` cut them:
:func:`multimodal.search.matryoshka.cut`), with the memory of a flat float32 index of the gallery at each width.

Scored for each retriever trained with ``matryoshka_dims`` and, as the reference, for the retriever it varies (the
same cut of vectors trained without the Matryoshka loss).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from benchmarks.common import ratio
from benchmarks.quality.retrieval_levers import base_of
from benchmarks.quality.retrieval_peer_eval import CHUNK, Gallery, mean_of, set_metrics
from benchmarks.quality.retrieval_peer_report import LABELS, cell
from benchmarks.quality.retrieval_queries import HEADLINE
from multimodal.search.matryoshka import cut
from multimodal.search.retriever import ProductRetriever

FRACTIONS = (1, 2, 4, 8)  # widths: the full width divided by each


def cut_variants(variant_args: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The variants scored at each width: those trained with ``matryoshka_dims`` and the retrievers they vary."""
    trained = {name for name, kw in variant_args.items() if kw.get("matryoshka_dims")}
    return [name for name in variant_args if name in trained or any(base_of(t) == name for t in trained)]


def width_scores(gallery: Gallery, model: ProductRetriever) -> dict[str, dict[str, Any]]:
    """Dense search of every query set with the vectors cut to each width:
    ``{width: {"index_bytes": flat float32 index of the gallery, "scores": {query set: {metric: mean}}}}``."""
    vectors, queries = gallery.vectors(model)
    full = vectors.shape[1]
    out: dict[str, dict[str, Any]] = {}
    for k in dict.fromkeys(max(1, full // f) for f in FRACTIONS):
        products, scores = cut(vectors, k), {}
        for s in gallery.sets:
            q = cut(queries[s.name], k)
            parts = [set_metrics(s, q[a : a + CHUNK] @ products.T, a) for a in range(0, len(s.texts), CHUNK)]
            scores[s.name] = mean_of(parts, s.metrics)
        out[str(k)] = {"index_bytes": int(products.shape[0]) * k * 4, "scores": scores}
    return out


def width_summary(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{variant: {width: {"index_bytes", "scores": {query set: {metric: {"mean", "min", "max"}}}}}}`` over the
    seeds' runs (each run's ``widths``: :func:`width_scores` by variant)."""
    out: dict[str, dict[str, Any]] = {}
    for variant, by_width in (runs[0].get("widths") or {}).items() if runs else ():
        out[variant] = {}
        for k, first in by_width.items():
            scores = {}
            for name, metrics in first["scores"].items():
                values = {m: [run["widths"][variant][k]["scores"][name][m] for run in runs] for m in metrics}
                scores[name] = {m: {"mean": float(np.mean(v)), "min": float(np.min(v)), "max": float(np.max(v))}
                                for m, v in values.items()}  # fmt: skip
            out[variant][k] = {"index_bytes": first["index_bytes"], "scores": scores}
    return out


def width_table(whole: dict[str, Any]) -> str:
    """Each cut variant's headline metrics by width, with the index memory ('' when no variant was cut)."""
    widths = whole.get("widths") or {}
    if not widths:
        return ""
    sets = {name: HEADLINE[info["kind"]] for name, info in whole["query_sets"].items()}
    lines = [
        f"Matryoshka widths: dense search over the whole catalogue ({whole['gallery']} products) with the vectors cut "
        "to their first dimensions (L2-renormalised), mean (min-max) over seeds; index memory: a flat float32 index:",
        "",
        "| retriever | width | index memory | " + " | ".join(f"{s} {LABELS[m]}" for s, m in sets.items()) + " |",
        "|---|---|---|" + "---|" * len(sets),
    ]
    for variant, by_width in widths.items():
        for k, info in by_width.items():
            row = [cell(info["scores"][s][m]) for s, m in sets.items()]
            lines.append(f"| {variant} | {k} | {size(info['index_bytes'])} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def size(n: int) -> str:
    """Bytes as KiB below 1 MiB, else MiB."""
    return f"{n / 2**10:.1f} KiB" if n < 2**20 else f"{n / 2**20:.2f} MiB"


def width_ratios(whole: dict[str, Any], variant_args: Mapping[str, Mapping[str, Any]]) -> dict[str, float | None]:
    """The headline metric of each query set at each narrower width over the full width's, for each variant trained
    with ``matryoshka_dims`` (``variant_args``: each variant's retriever arguments)."""
    out: dict[str, float | None] = {}
    for variant, by_width in (whole.get("widths") or {}).items():
        if not variant_args[variant].get("matryoshka_dims"):
            continue
        full = max(by_width, key=int)
        for k, info in by_width.items():
            if k == full:
                continue
            for name, q in whole["query_sets"].items():
                m = HEADLINE[q["kind"]]
                label = f"matryoshka, {name} {LABELS[m]}: {variant} at {k} / {full} dims"
                out[label] = ratio(info["scores"][name][m]["mean"], by_width[full]["scores"][name][m]["mean"])
    return out
