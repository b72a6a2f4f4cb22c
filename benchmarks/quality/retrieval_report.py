"""Retrieval quality beside the search itself: zero-shot tagging with the image-only retriever (against the trained
taggers of a tagging_quality result), the trained retrievers as users run them, the ratios and the tables."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from benchmarks.common import ratio, say
from benchmarks.quality.scores import attribute_scores
from benchmarks.quality.towers import RUNTIMES, deployable_checkpoint, runtime_apis
from encoders.pretrained import MiniLMTextEncoder
from multimodal.search.metrics import ranks_of_matches, scores_from_ranks
from multimodal.search.retriever import ProductRetriever
from multimodal.tagging.zero_shot import ZeroShotTagger


def ratios(results: dict[str, Any], depth: int) -> dict[str, float | None]:
    """Text->product recall@1 of each model against its peer in this run: the image-only vectors, the re-ranker's
    input, BM25 on shopper queries (the pairs whose both models ran)."""
    shopper = results["shopper_queries"]
    bm25 = shopper["BM25 on the title"]["t2p_recall@1"]
    pairs = {"fused / image-only, R@1": ("fused", "image-only"),
             f"fused + re-rank top {depth} / fused, R@1": (f"fused + re-rank top {depth}", "fused")}  # fmt: skip
    out = {
        label: ratio(results[a]["t2p_recall@1"], results[b]["t2p_recall@1"])
        for label, (a, b) in pairs.items()
        if a in results and b in results
    }
    for name, scores in shopper.items():
        if name.startswith("hybrid"):
            out[f"shopper queries, {name} / BM25, R@1"] = ratio(scores["t2p_recall@1"], bm25)
    return out


def zero_shot(
    model: ProductRetriever,
    text_tower: MiniLMTextEncoder,
    records: list[Any],
    split_rows: dict[str, list[int]],
    v_pooled: Tensor,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Prompt-based tagging of test photos with the image-only retriever; majority class for reference."""
    from collections import Counter

    def embed(texts: list[str]) -> Tensor:  # the retriever's projection over the real (uncached) text tower
        enc = text_tower.tokenize(texts)
        return torch.nn.functional.normalize(
            model.text_proj(text_tower(enc["input_ids"], enc["attention_mask"]).pooled), dim=-1
        )

    train_rows = set(split_rows["train"])
    vocab = {
        a: sorted({r.texts[a] for i, r in enumerate(records) if i in train_rows and r.texts[a]})
        for a in args.attributes
    }
    tagger = ZeroShotTagger(embed, vocab)
    test = split_rows["test"]
    trained = trained_taggers(args.tagger_results, [records[i].id for i in test])
    with torch.inference_mode():
        vectors = torch.nn.functional.normalize(model.image_proj(v_pooled[test].float()), dim=-1)
    predicted = tagger.predict(vectors)
    out = {}
    for a in args.attributes:
        truth = [records[i].texts[a] for i in test]
        majority = Counter(records[i].texts[a] for i in split_rows["train"]).most_common(1)[0][0]
        out[a] = {
            "zero_shot": attribute_scores(truth, predicted[a]),
            "majority_class": attribute_scores(truth, [majority] * len(test)),
        }
        for name, preds in trained.items():
            if all(a in p for p in preds):
                out[a][f"trained {name} tagger"] = attribute_scores(truth, [p[a] for p in preds])
    say(f"zero-shot: { {a: round(v['zero_shot']['acc'], 3) for a, v in out.items()} }")
    return out


def trained_taggers(path: str, test_ids: list[str]) -> dict[str, list[dict[str, str]]]:
    """Test predictions of the taggers in a tagging_quality result file, when it scored the same test ids."""
    file = Path(path)
    if not file.is_file():
        say(f"zero-shot: no trained-tagger results at {path}; zero-shot is reported alone")
        return {}
    variants = json.loads(file.read_text()).get("variants", {})
    out = {}
    for name in ("image_only", "cross_attention"):
        preds = variants.get(name, {}).get("predictions", {})
        if preds and all(i in preds for i in test_ids):
            out[name.replace("_", "-")] = [preds[i] for i in test_ids]
        elif preds:
            say(f"zero-shot: {path} '{name}' did not predict the same test ids; left out of the comparison")
    return out


def retriever_config(product: str, rerank: bool, args: argparse.Namespace) -> dict[str, Any]:
    """:func:`build`'s model as the ``model`` section of a config, with the real (frozen, pretrained) towers."""
    init: dict[str, Any] = {
        "vision": {
            "class_path": "encoders.pretrained.EfficientNetLiteEncoder",
            "init_args": {"variant": 0, "image_size": args.image_size, "trainable": False},
        },
        "text": {
            "class_path": "encoders.pretrained.MiniLMTextEncoder",
            "init_args": {"max_length": 32, "trainable": False},
        },
        "embed_dim": 256,
        "product": product,
        "query_columns": [args.query_column],
        "product_columns": list(args.product_columns),
    }
    if product == "fused":
        init["fusion"] = {
            "class_path": "fusion.late.LateFusion",
            "init_args": {"dim": 512, "mode": "gated", "dropout": 0.1},
        }
    init.update(args.retriever_args)  # the --retriever-args the benchmark's models were built with
    if rerank:
        init["reranker"] = {"class_path": "fusion.cross_attention.CrossAttentionFusion",
                            "init_args": {"dim": args.rerank_dim, "layers": 1, "heads": 4, "dropout": 0.1}}  # fmt: skip
    return {"class_path": "multimodal.search.retriever.ProductRetriever", "init_args": init}


def runtime_scores(
    model: ProductRetriever, product: str, rerank: bool, test: list[Any], args: argparse.Namespace, work: Path
) -> dict[str, dict[str, Any]]:
    """Full-title recall of the trained retriever as a user runs it: its checkpoint with real towers, on each
    runtime, through the Python API (``embed_text`` for the titles, ``extract_embedding`` for the products)."""
    import pandas as pd

    data_args = {"id_column": "id", "image_column": "image",
                 "text_columns": list(dict.fromkeys([args.query_column, *args.product_columns]))}  # fmt: skip
    ckpt, _ = deployable_checkpoint(model, retriever_config(product, rerank, args), data_args, work / "deployed.ckpt")
    apis, export = runtime_apis(ckpt, work, args.runtimes)
    images = Path(args.data) / "images"
    df = pd.DataFrame([{"id": r.id, "image": str(images / r.image), **r.texts} for r in test])
    titles = [r.texts[args.query_column] for r in test]
    vectors: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    out: dict[str, dict[str, Any]] = {}
    for label, api in apis.items():
        start = time.perf_counter()
        query, gallery = api.embed_text(titles), api.extract_embedding(df)
        seconds = time.perf_counter() - start
        vectors[label] = query, gallery
        q, g = torch.from_numpy(query), torch.from_numpy(gallery)
        out[label] = {
            **scores_from_ranks(ranks_of_matches(q, g), prefix="t2p_"),
            **scores_from_ranks(ranks_of_matches(g, q), prefix="p2t_"),
            "seconds": round(seconds, 1),
        }
        if export and label != RUNTIMES["torch"]:
            out[label]["max_abs_diff_at_export"] = {k: v["max_abs_diff"] for k, v in export["graphs"].items()}
    reference = vectors.get(RUNTIMES["torch"])
    if reference is not None:
        for label, (query, gallery) in vectors.items():
            out[label]["max_abs_vector_diff_vs_torch"] = float(
                max(np.abs(query - reference[0]).max(), np.abs(gallery - reference[1]).max())
            )
    return out


def table(results: dict[str, Any]) -> str:
    lines = [
        "| product vector | text->product R@1 | R@5 | R@10 | median rank | product->text R@1 | R@5 | R@10 | median rank |",  # noqa: E501
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if name in ("zero_shot", "full_title_queries", "shopper_queries", "shopper_query_examples",
                    "fusion_weight_on_val", "whole_catalogue", "zero_shot_by_variant"):  # fmt: skip
            continue
        lines.append(
            f"| {name} | "
            + " | ".join(
                f"{r[f'{d}_{m}']:.3f}" if "recall" in m else f"{r[f'{d}_{m}']:.0f}"
                for d in ("t2p", "p2t")
                for m in ("recall@1", "recall@5", "recall@10", "median_rank")
            )
            + " |"
        )
    if "shopper_queries" in results:
        lines += [
            "",
            "Shopper queries (3 of each test title's words) and full-title queries; BM25 indexes the titles:",
            "",
        ]
        lines += ["| queries | search | text->product R@1 | R@5 | R@10 | median rank |", "|---|---|---|---|---|---|"]
        for group, label in (("full_title_queries", "full title"), ("shopper_queries", "shopper")):
            for name, r in results[group].items():
                lines.append(
                    f"| {label} | {name} | "
                    + " | ".join(f"{r[f't2p_recall@{k}']:.3f}" for k in (1, 5, 10))
                    + f" | {r['t2p_median_rank']:.0f} |"
                )
    zs = results.get("zero_shot")
    if zs:
        columns = list(next(iter(zs.values())))  # zero_shot, majority_class, trained ... tagger
        columns = [c for c in columns if c != "majority_class"] + ["majority_class"]
        names = [c.replace("_", "-") for c in columns]
        lines += ["", "| attribute | " + " | ".join(f"{n} acc / macro-F1" for n in names) + " |"]
        lines += ["|---|" + "---|" * len(columns)]
        lines += [
            f"| {a} | " + " | ".join(f"{v[c]['acc']:.3f} / {v[c]['macro_f1']:.3f}" for c in columns) + " |"
            for a, v in zs.items()
        ]
    return "\n".join(lines)
