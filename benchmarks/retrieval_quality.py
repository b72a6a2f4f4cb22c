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
import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from benchmarks.common import (
    RUNTIMES,
    add_runtimes_argument,
    attribute_scores,
    deployable_checkpoint,
    machine,
    quiet_lightning,
    ratio,
    runtime_apis,
    say,
    seed_all,
    write_json,
)
from benchmarks.smoke import SAMPLE, parse
from encoders.pretrained import EfficientNetLiteEncoder, MiniLMTextEncoder
from encoders.types import Features, ImageTransform, TextEncoder, VisionEncoder
from fusion.cross_attention import CrossAttentionFusion
from fusion.late import LateFusion
from multimodal.data.datamodule import ProductDataModule
from multimodal.data.dataset import Collate
from multimodal.search.metrics import ranks_of_matches, scores_from_ranks
from multimodal.search.retriever import ProductRetriever
from multimodal.tagging.zero_shot import ZeroShotTagger


class CachedVision(VisionEncoder):
    """Frozen photo features looked up by row: ``pixel_values`` carries row indices ``(B,)``."""

    def __init__(self, tokens: Tensor, pooled: Tensor) -> None:
        super().__init__()
        self.tokens, self.pooled, self.output_dim = tokens, pooled, pooled.shape[1]

    def forward(self, pixel_values: Tensor) -> Features:
        idx = pixel_values.long()
        tokens = self.tokens[idx].float()
        return Features(tokens, torch.ones(tokens.shape[:2], dtype=torch.bool), self.pooled[idx].float())

    def image_transform(self, train: bool) -> ImageTransform:
        raise NotImplementedError


class CachedText(TextEncoder):
    """Frozen text features looked up by row: ``input_ids`` carries row indices ``(B, 1)``."""

    def __init__(self, tokens: Tensor, mask: Tensor, pooled: Tensor, tokenizer: Any) -> None:
        super().__init__()
        self.tokens, self.mask, self.pooled, self._tok = tokens, mask, pooled, tokenizer
        self.output_dim, self.max_length = pooled.shape[1], tokens.shape[1]

    @property
    def tokenizer(self) -> Any:
        return self._tok

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Features:
        idx = input_ids[:, 0].long()
        return Features(self.tokens[idx].float(), self.mask[idx], self.pooled[idx].float())


@torch.inference_mode()
def encode_images(
    dm: ProductDataModule, vision: EfficientNetLiteEncoder, batch_size: int, workers: int
) -> tuple[Tensor, Tensor]:
    class Pre:  # the data module's preprocessing hooks, with the pretrained tower's eval transform
        def image_transform(self, train: bool) -> ImageTransform:
            return vision.image_transform(False)

        def text_fn(self) -> Any:
            return lambda texts: {}

    dm.attach(Pre())  # type: ignore[arg-type]
    loader = DataLoader(dm.dataset("all"), batch_size=batch_size, num_workers=workers, collate_fn=Collate(lambda t: {}))
    tokens, pooled = [], []
    for i, batch in enumerate(loader):
        f = vision(batch["pixel_values"])
        tokens.append(f.tokens.half())
        pooled.append(f.pooled)
        if i % 10 == 0:
            say(f"  photos {sum(len(p) for p in pooled)}/{len(loader.dataset)}")
    return torch.cat(tokens), torch.cat(pooled)


@torch.inference_mode()
def encode_texts(texts: Sequence[str], text: MiniLMTextEncoder, batch_size: int = 128) -> tuple[Tensor, Tensor, Tensor]:
    tokens, masks, pooled = [], [], []
    for start in range(0, len(texts), batch_size):
        enc = text.tokenize(list(texts[start : start + batch_size]))
        f = text(enc["input_ids"], enc["attention_mask"])
        pad = text.max_length - f.tokens.shape[1]
        tokens.append(torch.nn.functional.pad(f.tokens, (0, 0, 0, pad)))
        masks.append(torch.nn.functional.pad(f.mask, (0, pad), value=False))
        pooled.append(f.pooled)
    return torch.cat(tokens), torch.cat(masks), torch.cat(pooled)


def batch_of(rows: list[int], n: int, ids: list[str]) -> dict[str, Any]:
    idx = torch.tensor(rows)
    ones = torch.ones(len(rows), 1, dtype=torch.long)
    return {
        "ids": [ids[r] for r in rows],
        "pixel_values": idx,
        "input_ids": idx[:, None],
        "attention_mask": ones,
        "product_input_ids": (idx + n)[:, None],
        "product_attention_mask": ones,
        "has_text": torch.ones(len(rows), dtype=torch.bool),
    }


def train(model: ProductRetriever, rows: list[int], n: int, ids: list[str], args: argparse.Namespace) -> float:
    loader = DataLoader(
        rows, batch_size=args.batch_size, shuffle=True, drop_last=True, collate_fn=lambda r: batch_of(r, n, ids)
    )
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, loader)
    return float(trainer.callback_metrics.get("train/loss", torch.tensor(float("nan"))))


@torch.inference_mode()
def evaluate(
    model: ProductRetriever, rows: list[int], n: int, ids: list[str], rerank: int = 0, combine: bool = False
) -> dict[str, float]:
    model.eval()
    batch = batch_of(rows, n, ids)
    query = model.embed_text(batch["input_ids"], batch["attention_mask"])
    product = model.embed_products(batch)
    t2p = ranks_of_matches(query, product)
    p2t = ranks_of_matches(product, query)
    if rerank:
        vision = model.vision(batch["pixel_values"])
        text = model.text(batch["input_ids"], batch["attention_mask"])

        def pairs(photos: Sequence[int], titles: Sequence[int]) -> tuple[Features, Features]:
            return vision_rows(vision, photos), text_rows(text, titles)

        # A query q's candidates c are products for text->product and titles for product->text.
        t2p = reranked_ranks(model, query @ product.t(), t2p, rerank, lambda q, c: pairs(c, q), 256, combine)
        p2t = reranked_ranks(model, product @ query.t(), p2t, rerank, lambda q, c: pairs(q, c), 256, combine)
    return {**scores_from_ranks(t2p, prefix="t2p_"), **scores_from_ranks(p2t, prefix="p2t_")}


def vision_rows(f: Features, rows: Sequence[int]) -> Features:
    return Features(f.tokens[list(rows)], f.mask[list(rows)], f.pooled[list(rows)])


text_rows = vision_rows


def reranked_ranks(
    model: ProductRetriever,
    sim: Tensor,
    ranks: Tensor,
    depth: int,
    pairs: Any,
    chunk: int = 256,
    combine: bool = False,
) -> Tensor:
    """Reorder each query's top ``depth`` by the re-ranker; a match outside the top ``depth`` keeps its rank.

    With ``combine`` the order is by ITM logit + the contrastive logit (cosine / temperature) instead of ITM alone.
    """
    out = ranks.clone()
    top = sim.topk(depth, dim=1).indices  # (Q, depth)
    queries = [q for q in range(sim.shape[0]) if ranks[q] < depth]
    flat = [(q, c) for q in queries for c in top[q].tolist()]
    scores = []
    for start in range(0, len(flat), chunk):  # the re-ranker runs on batches of (query, candidate) pairs
        part = flat[start : start + chunk]
        scores.append(model.match_scores(*pairs([q for q, _ in part], [c for _, c in part])))
    if not flat:
        return out
    table = torch.cat(scores).view(len(queries), depth)
    if combine:
        table = table + model.logit_scale.exp() * sim[queries].gather(1, top[queries])
    for row, q in enumerate(queries):
        cands = top[q].tolist()
        out[q] = int((table[row] > table[row, cands.index(q)]).sum())
    return out


def shopper_query(title: str, rng: Any, words: int = 3) -> str:
    """``words`` of a title's words chosen at random, in title order (the whole title when it is that short)."""
    parts = title.split()
    if len(parts) <= words:
        return title
    return " ".join(parts[i] for i in sorted(rng.choice(len(parts), size=words, replace=False).tolist()))


def rank_in(hits: list[tuple[int, float]], match: int) -> tuple[int, int] | None:
    """(items scoring higher than ``match``, items scoring the same, itself included) in a scored list; None when
    it is absent or scored 0 (not found)."""
    score = next((s for item, s in hits if item == match), 0.0)
    if score <= 0:
        return None
    return sum(s > score for _, s in hits), sum(s == score for _, s in hits)


def tie_aware_scores(ranks: list[tuple[int, int] | None], total: int) -> dict[str, float]:
    """recall@1/5/10 and median rank, expected over a random order of tied items: BM25 gives many products the
    same score (a two-word query), and counting ties in the match's favour would credit a 20-way tie as a hit."""
    pairs = [(total, 1) if r is None else r for r in ranks]
    out = {f"t2p_recall@{k}": float(np.mean([min(max((k - g) / e, 0.0), 1.0) for g, e in pairs])) for k in (1, 5, 10)}
    out["t2p_median_rank"] = float(np.median([g + (e + 1) / 2 for g, e in pairs]))
    return out


@torch.inference_mode()
def lexical_and_hybrid(
    model: ProductRetriever | None,
    rows: list[int],
    n: int,
    ids: list[str],
    queries: list[str],
    titles: list[str],
    full_titles: bool,
    weights: Sequence[float] = (0.5,),
) -> dict[str, dict[str, float]]:
    """text->product recall of BM25, of dense search (``model``; None: BM25 alone) and of their fusions, on
    ``queries`` (row i's answer is product i) over the test products' titles."""
    import pandas as pd

    from multimodal.search.lexical import LexicalIndex, reciprocal_rank_fusion, weighted_fusion
    from multimodal.search.query import HYBRID_DEPTH

    total = len(rows)
    lexical = LexicalIndex.build(pd.DataFrame({"title": titles}), ["title"])
    bm_scores, bm_rows = lexical.search(queries, total)
    lists = {
        "bm25": [
            [(int(r), float(s)) for r, s in zip(rr, ss, strict=True) if r >= 0]
            for rr, ss in zip(bm_rows, bm_scores, strict=True)
        ]
    }
    ranks: dict[str, list[tuple[int, int] | None]] = {
        "BM25 on the title": [rank_in(h, q) for q, h in enumerate(lists["bm25"])]
    }
    if model is not None:
        model.eval()
        idx = torch.tensor(rows) + (0 if full_titles else 2 * n)
        ones = torch.ones(len(rows), 1, dtype=torch.long)
        query = model.embed_text(idx[:, None], ones)
        product = model.embed_products(batch_of(rows, n, ids))
        sim = (query @ product.t()).numpy()
        ranks["dense"] = [(int((sim[q] > sim[q, q]).sum()), int((sim[q] == sim[q, q]).sum())) for q in range(total)]
        rrf: list[tuple[int, int] | None] = []
        weighted: dict[float, list[tuple[int, int] | None]] = {w: [] for w in weights}
        for q in range(total):
            top = np.argsort(-sim[q], kind="stable")[:HYBRID_DEPTH]
            lex = np.array([r for r, _ in lists["bm25"][q][:HYBRID_DEPTH]], dtype=np.int64)
            lex_s = np.array([s for _, s in lists["bm25"][q][:HYBRID_DEPTH]], dtype=np.float32)
            rrf.append(rank_in(reciprocal_rank_fusion([top, lex]), q))
            for w in weights:
                weighted[w].append(rank_in(weighted_fusion((sim[q, top], top), (lex_s, lex), w), q))
        ranks["hybrid (RRF)"] = rrf
        ranks.update({f"hybrid (weighted {w:g})": r for w, r in weighted.items()})
    return {name: tie_aware_scores(r, total) for name, r in ranks.items()}


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


# --smoke: 32 training and 12 validation / test products at 64 px, one epoch, a shallow re-rank, one fusion weight
SMOKE = {"data": str(SAMPLE), "max_train": 32, "max_eval": 12, "image_size": 64, "epochs": 1, "batch_size": 8,
         "rerank": 4, "rerank_dim": 16, "workers": 0, "fusion_weights": [0.5], "tagger_results": ""}  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.retrieval_quality", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--data", default="examples/fashion-products", help="folder with metadata.csv and images/")
    p.add_argument("--query-column", default="title")
    p.add_argument("--product-columns", nargs="+", default=["gender", "articleType", "baseColour", "season", "usage"])
    p.add_argument(
        "--attributes",
        nargs="+",
        default=["gender", "masterCategory", "subCategory", "articleType", "baseColour"],
        help="zero-shot attributes",
    )
    p.add_argument("--image-size", type=int, default=128, help="photo size (128 px: 4x4 feature tokens)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--max-train", type=int, default=None, help="use at most this many training products")
    p.add_argument("--max-eval", type=int, default=None, help="use at most this many validation and test products")
    p.add_argument("--rerank-dim", type=int, default=128, help="width of the re-ranker's cross-attention")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--rerank", type=int, default=20, help="re-rank depth")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--fusion-weights",
        type=float,
        nargs="+",
        default=[0.05, 0.1, 0.2, 0.3, 0.5, 0.7],
        help="dense shares of the weighted hybrid fusion tried on the validation split (the best is run on test)",
    )
    p.add_argument(
        "--tagger-results",
        default="benchmarks/results/tagging_quality.json",
        help="tagging_quality result file whose trained taggers are scored beside zero-shot (same test ids)",
    )
    add_runtimes_argument(p, "rows '<model> [<runtime>]', full-title queries")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/retrieval_quality.json")
    return parse(p, argv, SMOKE, "benchmarks.retrieval_quality")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    quiet_lightning()
    seed_all(args.seed)
    data = Path(args.data)
    columns = list(dict.fromkeys([args.query_column, *args.product_columns, *args.attributes]))
    dm = ProductDataModule(
        str(data / "metadata.csv"),
        str(data / "images"),
        text_columns=columns,
        on_bad_sample="error",
        batch_size=args.batch_size,
    )
    for split, cap in {"train": args.max_train, "val": args.max_eval, "test": args.max_eval}.items():
        dm.splits[split] = dm.splits[split][:cap]  # a cap of None keeps them all
    records = [r for s in ("train", "val", "test") for r in dm.splits[s]]
    n, ids = len(records), [r.id for r in records]
    offsets = {"train": 0, "val": len(dm.splits["train"]), "test": len(dm.splits["train"]) + len(dm.splits["val"])}
    split_rows = {s: list(range(offsets[s], offsets[s] + len(dm.splits[s]))) for s in offsets}
    say(f"{n} products: train {len(split_rows['train'])}, test {len(split_rows['test'])}")
    vision_tower = EfficientNetLiteEncoder(0, image_size=args.image_size, trainable=False).eval()
    text_tower = MiniLMTextEncoder(max_length=32, trainable=False).eval()
    v_tokens, v_pooled = encode_images(dm, vision_tower, args.batch_size, args.workers)
    say("photos encoded")
    titles = [r.texts[args.query_column] or "" for r in records]
    product_texts = [". ".join(r.texts[c] for c in args.product_columns if r.texts[c]) for r in records]
    rng = np.random.default_rng(args.seed)
    shopper = [shopper_query(t, rng) for t in titles]  # text rows 2n.. (titles 0.., product texts n..)
    t_tokens, t_mask, t_pooled = encode_texts(titles + product_texts + shopper, text_tower)
    say("texts encoded")
    vision, text = CachedVision(v_tokens, v_pooled), CachedText(t_tokens, t_mask, t_pooled, text_tower.tokenizer)
    test = split_rows["test"]
    test_titles = [titles[r] for r in test]
    results: dict[str, Any] = {
        "full_title_queries": lexical_and_hybrid(None, test, n, ids, test_titles, test_titles, True),
        "shopper_queries": lexical_and_hybrid(None, test, n, ids, [shopper[r] for r in test], test_titles, False),
        "shopper_query_examples": [[titles[r], shopper[r]] for r in test[:5]],
    }
    for name, product, rerank in (("image-only", "image", False), ("fused", "fused", True)):
        seed_all(args.seed)
        model = build(vision, text, product, args, rerank)
        loss = train(model, split_rows["train"], n, ids, args)
        results[name] = {**evaluate(model, split_rows["test"], n, ids), "final_train_loss": loss}
        say(f"{name}: {results[name]}")
        val = split_rows["val"]
        on_val = lexical_and_hybrid(
            model, val, n, ids, [shopper[r] for r in val], [titles[r] for r in val], False, args.fusion_weights
        )
        best = max(args.fusion_weights, key=lambda w: on_val[f"hybrid (weighted {w:g})"]["t2p_recall@1"])
        results.setdefault("fusion_weight_on_val", {})[name] = {
            "chosen": best,
            "val_recall@1": {f"{w:g}": on_val[f"hybrid (weighted {w:g})"]["t2p_recall@1"] for w in args.fusion_weights},
        }
        say(f"weighted fusion, dense share chosen on the validation split: {best}")
        for variant, scores in lexical_and_hybrid(
            model, test, n, ids, [shopper[r] for r in test], test_titles, False, sorted({0.5, best})
        ).items():
            if variant != "BM25 on the title":
                results["shopper_queries"][
                    f"{variant}, {name}" if variant == "dense" else f"{variant}: BM25 + {name}"
                ] = scores
        say(f"shopper queries: { {k: round(v['t2p_recall@1'], 3) for k, v in results['shopper_queries'].items()} }")
        if rerank:
            results[f"{name} + re-rank top {args.rerank}"] = evaluate(
                model, split_rows["test"], n, ids, rerank=args.rerank
            )
            say(f"re-rank: {results[f'{name} + re-rank top {args.rerank}']}")
            both = f"{name} + re-rank top {args.rerank} (ITM + cosine)"
            results[both] = evaluate(model, split_rows["test"], n, ids, rerank=args.rerank, combine=True)
            say(f"re-rank, ITM + cosine: {results[both]}")
        if product == "image":
            results["zero_shot"] = zero_shot(model, text_tower, records, split_rows, v_pooled, args)
        if args.runtimes:
            work = Path(tempfile.mkdtemp(prefix="retrieval-runtimes-"))
            for label, scores in runtime_scores(model, product, rerank, [records[r] for r in test], args, work).items():
                results[f"{name} [{label}]"] = scores
                say(f"{name} [{label}]: {scores}")
            shutil.rmtree(work, ignore_errors=True)
    payload = {
        "machine": machine(),
        "args": vars(args),
        "products": n,
        "test_products": len(split_rows["test"]),
        "results": results,
        "ratios": ratios(results, args.rerank),
        "table": table(results),
    }
    write_json(args.out, payload)
    print(payload["table"])


def ratios(results: dict[str, Any], depth: int) -> dict[str, float | None]:
    """Text->product recall@1 of each model against its peer in this run: the image-only vectors, the re-ranker's
    input, BM25 on shopper queries."""
    shopper = results["shopper_queries"]
    bm25 = shopper["BM25 on the title"]["t2p_recall@1"]
    out = {
        "fused / image-only, R@1": ratio(results["fused"]["t2p_recall@1"], results["image-only"]["t2p_recall@1"]),
        f"fused + re-rank top {depth} / fused, R@1": ratio(
            results[f"fused + re-rank top {depth}"]["t2p_recall@1"], results["fused"]["t2p_recall@1"]
        ),
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
                    "fusion_weight_on_val"):  # fmt: skip
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


if __name__ == "__main__":
    main()
