"""Retrieval quality on the test split: image-only vs fused vs fused + re-rank product vectors, same run.

Offline pretrained towers (EfficientNet-Lite0 ImageNet photos, MiniLM-L6 text) are frozen and run once; their
outputs are cached and fed to the real ``ProductRetriever`` (projections, fusion block, temperature, re-ranker)
through lookup encoders, so the three variants train in minutes on a 2-core CPU. Queries are titles; a fused
product vector fuses the photo with the product's *attribute* text (not its title, which would make
text->product search trivial). Also reports zero-shot tagging ("a photo of a {value}") with the image model.

Lexical and hybrid search (``multimodal search --mode lexical|hybrid``) are compared with dense search on *shopper
queries*: 3 of each test title's words (chosen with a fixed seed, in title order), the length of a typical shop
search. BM25 (``bm25s``, the product's ``LexicalIndex``) indexes the full titles, so a
full-title query would be an exact lexical copy of its answer (that row is reported too, for reference); hybrid
joins the dense and BM25 top-100 lists by reciprocal-rank fusion and by a weighted score fusion (``--fusion
weighted``: 50/50, and the dense share that scored best on the validation split's shopper queries), with the same
functions as the search command. Ties (frequent in BM25 for short queries) are scored as expected over a
random order of the tied products.

    python -m benchmarks.retrieval_quality --data data/fashion-products \
        --out benchmarks/results/retrieval_quality.json
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks import harness
from benchmarks.common import quiet_lightning, say, seed_all
from benchmarks.harness import SAMPLE, Option, Report
from benchmarks.quality.retrieval_data import CachedText, CachedVision, Encoded, encode
from benchmarks.quality.retrieval_eval import evaluate, lexical_and_hybrid, train
from benchmarks.quality.retrieval_report import ratios, runtime_scores, table, zero_shot
from benchmarks.quality.towers import runtimes_option
from fusion.cross_attention import CrossAttentionFusion
from fusion.late import LateFusion
from multimodal.search.retriever import ProductRetriever

OPTIONS = {
    "--data": Option("examples/fashion-products", "folder with metadata.csv and images/"),
    "--query-column": Option("title"),
    "--product-columns": Option(["gender", "articleType", "baseColour", "season", "usage"]),
    "--attributes": Option(["gender", "masterCategory", "subCategory", "articleType", "baseColour"],
                           "zero-shot attributes"),
    "--image-size": Option(128, "photo size (128 px: 4x4 feature tokens)"),
    "--epochs": Option(10),
    "--max-train": Option(None, "use at most this many training products", type=int),
    "--max-eval": Option(None, "use at most this many validation and test products", type=int),
    "--rerank-dim": Option(128, "width of the re-ranker's cross-attention"),
    "--batch-size": Option(64),
    "--lr": Option(1e-3),
    "--rerank": Option(20, "re-rank depth"),
    "--workers": Option(2),
    "--fusion-weights": Option([0.05, 0.1, 0.2, 0.3, 0.5, 0.7], "dense shares of the weighted hybrid fusion tried "
                               "on the validation split (the best is run on test)"),
    "--tagger-results": Option("benchmarks/results/tagging_quality.json", "tagging_quality result file whose "
                               "trained taggers are scored beside zero-shot (same test ids)"),
    "--runtimes": runtimes_option("rows '<model> [<runtime>]', full-title queries"),
    "--seed": Option(0),
    "--out": Option("benchmarks/results/retrieval_quality.json"),
}  # fmt: skip
# --smoke: 32 training and 12 validation / test products at 64 px, one epoch, a shallow re-rank, one fusion weight
SMOKE = {"data": str(SAMPLE), "max_train": 32, "max_eval": 12, "image_size": 64, "epochs": 1, "batch_size": 8,
         "rerank": 4, "rerank_dim": 16, "workers": 0, "fusion_weights": [0.5], "tagger_results": ""}  # fmt: skip
MODELS = (("image-only", "image", False), ("fused", "fused", True))  # name, product vector, with a re-ranker


def main(argv: list[str] | None = None) -> None:
    args = harness.parse(harness.parser("retrieval_quality", __doc__, OPTIONS), argv, SMOKE,
                         "benchmarks.retrieval_quality")  # fmt: skip
    quiet_lightning()
    seed_all(args.seed)
    data = encode(args)
    test = data.split_rows["test"]
    test_titles = [data.titles[r] for r in test]
    results: dict[str, Any] = {
        "full_title_queries": lexical_and_hybrid(None, test, data.n, data.ids, test_titles, test_titles, True),
        "shopper_queries": lexical_and_hybrid(None, test, data.n, data.ids, [data.shopper[r] for r in test],
                                              test_titles, False),
        "shopper_query_examples": [[data.titles[r], data.shopper[r]] for r in test[:5]],
    }  # fmt: skip
    for name, product, rerank in MODELS:
        run_model(args, data, results, name, product, rerank)
    report = Report(args.out, args)
    report.update(products=data.n, test_products=len(test), results=results, ratios=ratios(results, args.rerank),
                  table=table(results))  # fmt: skip
    report.finish(report["table"])


def build(
    vision: CachedVision, text: CachedText, product: str, args: argparse.Namespace, rerank: bool
) -> ProductRetriever:
    def opt(params: Any) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)

    return ProductRetriever(
        vision,
        text,
        embed_dim=256,
        product=product,  # type: ignore[arg-type]
        fusion=(lambda dv, dt: LateFusion(dv, dt, dim=512, mode="gated", dropout=0.1)) if product == "fused" else None,
        reranker=(lambda dv, dt: CrossAttentionFusion(dv, dt, dim=args.rerank_dim, layers=1, heads=4, dropout=0.1))
        if rerank
        else None,
        optimizer=opt,
        encoder_lr_scale=0.0,
    )


def run_model(
    args: argparse.Namespace, data: Encoded, results: dict[str, Any], name: str, product: str, rerank: bool
) -> None:
    """Train one retriever and add its recall (re-ranked too), its hybrid search, zero-shot tagging (image-only)
    and its ``--runtimes`` rows to ``results``."""
    n, ids, test = data.n, data.ids, data.split_rows["test"]
    seed_all(args.seed)
    model = build(data.vision, data.text, product, args, rerank)
    loss = train(model, data.split_rows["train"], n, ids, args)
    results[name] = {**evaluate(model, test, n, ids), "final_train_loss": loss}
    say(f"{name}: {results[name]}")
    hybrid(args, data, results, model, name)
    if rerank:
        results[f"{name} + re-rank top {args.rerank}"] = evaluate(model, test, n, ids, rerank=args.rerank)
        say(f"re-rank: {results[f'{name} + re-rank top {args.rerank}']}")
        both = f"{name} + re-rank top {args.rerank} (ITM + cosine)"
        results[both] = evaluate(model, test, n, ids, rerank=args.rerank, combine=True)
        say(f"re-rank, ITM + cosine: {results[both]}")
    if product == "image":
        results["zero_shot"] = zero_shot(model, data.text_tower, data.records, data.split_rows, data.v_pooled, args)
    if args.runtimes:
        work = Path(tempfile.mkdtemp(prefix="retrieval-runtimes-"))
        for label, scores in runtime_scores(
            model, product, rerank, [data.records[r] for r in test], args, work
        ).items():
            results[f"{name} [{label}]"] = scores
            say(f"{name} [{label}]: {scores}")
        shutil.rmtree(work, ignore_errors=True)


def hybrid(
    args: argparse.Namespace, data: Encoded, results: dict[str, Any], model: ProductRetriever, name: str
) -> None:
    """Dense and hybrid search of the shopper queries: the weighted fusion's dense share chosen on validation, then
    the test split with 50/50 and that share."""
    n, ids, val, test = data.n, data.ids, data.split_rows["val"], data.split_rows["test"]
    on_val = lexical_and_hybrid(model, val, n, ids, [data.shopper[r] for r in val], [data.titles[r] for r in val],
                                False, args.fusion_weights)  # fmt: skip
    best = max(args.fusion_weights, key=lambda w: on_val[f"hybrid (weighted {w:g})"]["t2p_recall@1"])
    results.setdefault("fusion_weight_on_val", {})[name] = {
        "chosen": best,
        "val_recall@1": {f"{w:g}": on_val[f"hybrid (weighted {w:g})"]["t2p_recall@1"] for w in args.fusion_weights},
    }
    say(f"weighted fusion, dense share chosen on the validation split: {best}")
    on_test = lexical_and_hybrid(model, test, n, ids, [data.shopper[r] for r in test], [data.titles[r] for r in test],
                                 False, sorted({0.5, best}))  # fmt: skip
    for variant, scores in on_test.items():
        if variant != "BM25 on the title":
            label = f"{variant}, {name}" if variant == "dense" else f"{variant}: BM25 + {name}"
            results["shopper_queries"][label] = scores
    say(f"shopper queries: { {k: round(v['t2p_recall@1'], 3) for k, v in results['shopper_queries'].items()} }")


if __name__ == "__main__":
    main()
