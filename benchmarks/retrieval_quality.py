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

The whole catalogue as the gallery (every product of every split; the retrievers still trained on the train split),
as the peers publish search quality: a test product's title or shopper words -> that product (R@1, R@10, MRR); a
category or colour value as a shopper types it ("tshirts", "navy blue") -> any product with it (P@1, P@10, MRR); 2-3
attribute values in column order ("women blue jeans") drawn from combinations the catalogue has -> nDCG@10 with a
product's relevance the number of the query's attributes it matches. BM25, dense image-only and fused, and both
hybrid fusions side by side, each retriever trained once per ``--seeds`` seed (mean and range); the peers' published
numbers (another gallery, zero-shot) are printed beside them as context.

The retriever's training levers (query views, multi-positive InfoNCE, hard negatives, Matryoshka widths) are
measured with ``--levers``: each preset is trained as its own variant of every ``--variants`` retriever, same seeds,
and compared with it (:mod:`benchmarks.quality.retrieval_levers`); a retriever trained with Matryoshka widths is
also scored with its vectors cut to 1/2, 1/4 and 1/8 of the width, beside the index memory.

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
from benchmarks.quality.retrieval_default_hybrid import tuning_queries
from benchmarks.quality.retrieval_eval import evaluate, lexical_and_hybrid, train
from benchmarks.quality.retrieval_lever_batches import training_loader
from benchmarks.quality.retrieval_lever_report import lever_ratios, lever_table, zero_shot_table
from benchmarks.quality.retrieval_levers import (
    EMBED_DIM,
    base_of,
    lever_columns,
    retriever_args,
    variants,
    view_settings,
)
from benchmarks.quality.retrieval_levers import OPTIONS as LEVER_OPTIONS
from benchmarks.quality.retrieval_peer_eval import Gallery
from benchmarks.quality.retrieval_peer_report import published, summary, system_name
from benchmarks.quality.retrieval_peer_report import ratios as whole_ratios
from benchmarks.quality.retrieval_peer_report import table as whole_table
from benchmarks.quality.retrieval_report import ratios, runtime_scores, table, zero_shot
from benchmarks.quality.retrieval_widths import cut_variants, width_ratios, width_scores, width_summary, width_table
from benchmarks.quality.towers import runtimes_option
from fusion.cross_attention import CrossAttentionFusion
from fusion.late import LateFusion
from multimodal.errors import UserError
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
    "--variants": Option(["image-only", "fused"], "the retrievers trained (product vector: the photo, or the photo "
                         "fused with the attribute text)", choices=["image-only", "fused"]),
    "--retriever-args": Option("{}", "JSON object merged into the keyword arguments of ProductRetriever(...) of "
                               "every variant, e.g. '{\"image_loss_weight\": 0.2}'", metavar="JSON"),
    "--seeds": Option([0, 1, 2], "each retriever is trained once per seed: the whole-catalogue table reports mean "
                      "and range, the other rows the first seed"),
    "--category-columns": Option(["subCategory", "articleType"], "category->product queries: each distinct value, "
                                 "lowercased"),
    "--colour-column": Option("baseColour", "colour->product queries: each distinct value, lowercased"),
    "--combination-columns": Option(["gender", "baseColour", "articleType"], "attribute-combination queries: 2 or 3 "
                                    "of these columns' values in this order (usage, season... may be added)"),
    "--combinations": Option(300, "attribute-combination queries drawn (0: none)"),
    "--seed": Option(0, "seed of the queries' draws (shopper words, attribute combinations)"),
    **LEVER_OPTIONS,
    "--cache": Option("", "folder that keeps the frozen towers' outputs (photos, texts, query views) between runs, "
                      "each named by a hash of its inputs (empty: none)"),
    "--out": Option("benchmarks/results/retrieval_quality.json"),
}  # fmt: skip
# --smoke: 32 training and 12 validation / test products at 64 px, one epoch, a shallow re-rank, one fusion weight,
# every lever together (as a variant of each retriever), 2-word title views
SMOKE = {"data": str(SAMPLE), "max_train": 32, "max_eval": 12, "image_size": 64, "epochs": 1, "batch_size": 8,
         "rerank": 4, "rerank_dim": 16, "workers": 0, "fusion_weights": [0.5], "tagger_results": "", "seeds": [0],
         "combinations": 20, "levers": ["all"], "view_title_words": [2, 2]}  # fmt: skip
MODELS = {"image-only": ("image", False), "fused": ("fused", True)}  # name: product vector, with a re-ranker


def main(argv: list[str] | None = None) -> None:
    p = harness.parser("retrieval_quality", __doc__, OPTIONS)
    args = harness.parse(p, argv, SMOKE, "benchmarks.retrieval_quality")
    args.retriever_args = retriever_args(p, args.retriever_args)
    args.variants = list(dict.fromkeys(args.variants))
    args.variant_args = variants(p, args)  # every retriever trained: name -> its ProductRetriever arguments
    quiet_lightning()
    seed_all(args.seed)
    try:
        data = encode(args, view_settings(args.variant_args), lever_columns(args.variant_args))
    except UserError as err:  # a column option naming no column of the data
        p.error(str(err))
    test = data.split_rows["test"]
    test_titles = [data.titles[r] for r in test]
    results: dict[str, Any] = {
        "full_title_queries": lexical_and_hybrid(None, test, data.n, data.ids, test_titles, test_titles, True),
        "shopper_queries": lexical_and_hybrid(None, test, data.n, data.ids, [data.shopper[r] for r in test],
                                              test_titles, False),
        "shopper_query_examples": [[data.titles[r], data.shopper[r]] for r in test[:5]],
    }  # fmt: skip
    gallery = Gallery(data, data.query_sets, tuning_queries(data, args.product_columns))
    say(f"whole catalogue, BM25: { {s: round(next(iter(v.values())), 3) for s, v in gallery.bm25.items()} }")
    runs, names = [], list(args.variant_args)
    for i, seed in enumerate(args.seeds):
        run: dict[str, Any] = {"seed": seed, "fusion_weight": {}, "hybrid_default": {}, "scores": {}, "widths": {}}
        for name in names:
            run_model(args, data, results if i == 0 else None, name, seed, gallery, run)
        runs.append(run)
    whole = {"gallery": data.n, "variants": names, "runs": runs,
             "query_sets": {s.name: {**s.summary(), "metrics": list(s.metrics)} for s in data.query_sets},
             "summary": summary(data.query_sets, gallery.bm25, runs, names), "widths": width_summary(runs),
             "published_peers": published()}  # fmt: skip
    results["whole_catalogue"] = whole
    report = Report(args.out, args)
    tables = [table(results), whole_table(whole), lever_table(whole), zero_shot_table(results), width_table(whole)]
    ratio_sets = [ratios(results, args.rerank), whole_ratios(whole), lever_ratios(whole),
                  width_ratios(whole, args.variant_args)]  # fmt: skip
    report.update(products=data.n, test_products=len(test), results=results,
                  ratios={k: v for r in ratio_sets for k, v in r.items()},
                  table="\n\n".join(t for t in tables if t))  # fmt: skip
    report.finish(report["table"])


def build(
    vision: CachedVision, text: CachedText, product: str, args: argparse.Namespace, rerank: bool
) -> ProductRetriever:
    def opt(params: Any) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)

    kwargs: dict[str, Any] = {"embed_dim": EMBED_DIM, "encoder_lr_scale": 0.0, **args.retriever_args}
    return ProductRetriever(
        vision,
        text,
        product=product,  # type: ignore[arg-type]
        fusion=(lambda dv, dt: LateFusion(dv, dt, dim=512, mode="gated", dropout=0.1)) if product == "fused" else None,
        reranker=(lambda dv, dt: CrossAttentionFusion(dv, dt, dim=args.rerank_dim, layers=1, heads=4, dropout=0.1))
        if rerank
        else None,
        optimizer=opt,
        **kwargs,
    )


def run_model(
    args: argparse.Namespace,
    data: Encoded,
    results: dict[str, Any] | None,
    name: str,
    seed: int,
    gallery: Gallery,
    run: dict[str, Any],
) -> None:
    """Train one retriever (``name``: a ``--variants`` retriever, or one with a lever) with ``seed``, choose its
    weighted fusion's dense share on the validation split and add its whole-catalogue scores (and, when it is cut,
    its scores by width) to ``run``; with ``results`` (the first seed), also its test-split rows."""
    product, rerank = MODELS[base_of(name)]
    own = argparse.Namespace(**{**vars(args), "retriever_args": args.variant_args[name]})
    seed_all(seed)
    model = build(data.vision, data.text, product, own, rerank)
    loss = train(model, training_loader(model, data, data.split_rows["train"], args.batch_size, seed), args)
    weight, on_val = choose_weight(args, data, model)
    run["fusion_weight"][name] = weight
    scores_by_system, run["hybrid_default"][name] = gallery.score(model, weight)
    for system, scores in scores_by_system.items():
        run["scores"][system_name(system, name)] = scores
    dense = {s: round(next(iter(v.values())), 3) for s, v in run["scores"][system_name("dense", name)].items()}
    say(f"seed {seed}, {name}, whole catalogue, dense: {dense}")
    if name in cut_variants(args.variant_args):
        run["widths"][name] = width_scores(gallery, model)
    if results is not None:
        first_seed_rows(own, data, results, model, name, loss, (weight, on_val))


def first_seed_rows(
    args: argparse.Namespace,
    data: Encoded,
    results: dict[str, Any],
    model: ProductRetriever,
    name: str,
    loss: float,
    chosen: tuple[float, dict[str, float]],
) -> None:
    """A trained retriever's rows over the test products: its recall (re-ranked too), its hybrid search, and for a
    ``--variants`` retriever (not its lever variants) zero-shot tagging (image-only) and its ``--runtimes`` rows."""
    n, ids, test = data.n, data.ids, data.split_rows["test"]
    product, rerank = MODELS[base_of(name)]
    results[name] = {**evaluate(model, test, n, ids), "final_train_loss": loss}
    say(f"{name}: {results[name]}")
    hybrid(args, data, results, model, name, *chosen)
    if rerank:
        results[f"{name} + re-rank top {args.rerank}"] = evaluate(model, test, n, ids, rerank=args.rerank)
        say(f"re-rank: {results[f'{name} + re-rank top {args.rerank}']}")
        both = f"{name} + re-rank top {args.rerank} (ITM + cosine)"
        results[both] = evaluate(model, test, n, ids, rerank=args.rerank, combine=True)
        say(f"re-rank, ITM + cosine: {results[both]}")
    tagged = zero_shot(model, data.text_tower, data.records, data.split_rows, data.v_pooled, args)
    results.setdefault("zero_shot_by_variant", {})[name] = {a: v["zero_shot"]["acc"] for a, v in tagged.items()}
    if base_of(name) != name:
        return
    if product == "image":
        results["zero_shot"] = tagged
    if args.runtimes:
        work = Path(tempfile.mkdtemp(prefix="retrieval-runtimes-"))
        for label, scores in runtime_scores(
            model, product, rerank, [data.records[r] for r in test], args, work
        ).items():
            results[f"{name} [{label}]"] = scores
            say(f"{name} [{label}]: {scores}")
        shutil.rmtree(work, ignore_errors=True)


def choose_weight(args: argparse.Namespace, data: Encoded, model: ProductRetriever) -> tuple[float, dict[str, float]]:
    """The weighted fusion's dense share that scored best on the validation split's shopper queries, and the
    validation R@1 of each share tried."""
    n, ids, val = data.n, data.ids, data.split_rows["val"]
    on_val = lexical_and_hybrid(model, val, n, ids, [data.shopper[r] for r in val], [data.titles[r] for r in val],
                                False, args.fusion_weights)  # fmt: skip
    scores = {f"{w:g}": on_val[f"hybrid (weighted {w:g})"]["t2p_recall@1"] for w in args.fusion_weights}
    return max(args.fusion_weights, key=lambda w: scores[f"{w:g}"]), scores


def hybrid(
    args: argparse.Namespace,
    data: Encoded,
    results: dict[str, Any],
    model: ProductRetriever,
    name: str,
    best: float,
    on_val: dict[str, float],
) -> None:
    """Dense and hybrid search of the test split's shopper queries, with 50/50 and the weighted fusion's dense share
    ``best`` (chosen on validation: ``on_val``, R@1 by share)."""
    n, ids, test = data.n, data.ids, data.split_rows["test"]
    results.setdefault("fusion_weight_on_val", {})[name] = {"chosen": best, "val_recall@1": on_val}
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
