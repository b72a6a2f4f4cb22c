"""Consensus reranking settings, chosen on the validation split: CIDEr of ``candidates`` x ``k`` (neighbour titles) x
``weight`` (of the beam score) for one trained captioner, on validation and test.

Trains one method exactly as ``benchmarks.caption_quality`` does (same data, features, split, steps and learning
rates), lets beam search propose each ``--candidates`` number of captions per photo of the validation and test
splits, then reranks those candidates with every ``k`` x ``weight``
(:class:`multimodal.captioning.consensus.CiderConsensus`, the neighbours from the training photos' caption memory,
as ``ProductCaptioner(rerank=...)`` does). The setting
with the best validation CIDEr is the one to use; its test CIDEr is printed beside it, next to greedy decoding and
the top beam. The captioner gets no neighbour titles in its prompt (no ``--retrieval``).

    python -m benchmarks.caption_rerank_grid --data data/fashion-products --method late \\
        --out benchmarks/results/caption_rerank_grid.json
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from benchmarks import caption_quality, harness
from benchmarks.common import ratio, say
from benchmarks.harness import SAMPLE, Option, Report
from benchmarks.quality.caption_loop import predict, train
from benchmarks.quality.caption_merge import public_command
from benchmarks.quality.caption_models import MODES, cached_features, load_split, take
from encoders.types import Features

OPTIONS = {
    "--data": Option("examples/fashion-products", "folder with metadata.csv and images/"),
    "--method": Option("late", choices=sorted(MODES)),
    "--seed": Option(0),
    "--candidates": Option([4, 8, 12, 16], "beam candidates per photo"),
    "--ks": Option([3, 5, 8, 12, 20], "neighbour titles to agree with"),
    "--weights": Option([0.0, 0.5, 1.0, 2.0], "weights of the beam score"),
    "--features_cache": Option("", "caption_quality's feature cache (train and test)"),
    "--benchmark_args": Option("--epochs 3 --lr 0.001 --max_length 20",
                               "caption_quality flags for training (its defaults otherwise)"),
    "--out": Option("benchmarks/results/caption_rerank_grid.json"),
}  # fmt: skip
# --smoke: caption_quality's smoke training, 2 candidates, 2 neighbours, 2 weights
SMOKE = {"data": str(SAMPLE), "candidates": [2], "ks": [2], "weights": [0.0, 1.0],
         "benchmark_args": "--epochs 1 --batch_size 4 --max_length 12 --max_new_tokens 4 --max_train 8 --max_test 4 "
         "--image_size 64"}  # fmt: skip


@torch.no_grad()
def candidates(model: Any, feats: Features, n: int, max_new_tokens: int) -> tuple[list[str], list[float]]:
    """``n`` beam captions per photo, best first, one photo after the other: texts and beam scores."""
    texts: list[str] = []
    scores: list[float] = []
    for i in range(0, feats.tokens.shape[0], 32):
        rows = torch.arange(i, min(i + 32, feats.tokens.shape[0]))
        ids = torch.full((len(rows), 1), model.lm.bos_id)
        options = {"max_new_tokens": max_new_tokens, "num_beams": n, "num_return_sequences": n}
        found = model.generate_from_features(take(feats, rows), ids, torch.ones_like(ids), rerank=False, **options)
        texts += found.texts
        scores += found.scores
    return texts, scores


def main(argv: list[str] | None = None) -> None:
    args = harness.parse(harness.parser("caption_rerank_grid", __doc__, OPTIONS), argv, SMOKE,
                         "benchmarks.caption_rerank_grid")  # fmt: skip
    from multimodal.captioning.retrieval import CaptionMemory

    flags = ["--data", args.data, "--features_cache", args.features_cache, "--seed", str(args.seed)]
    bench = caption_quality.parser().parse_args([*args.benchmark_args.split(), *flags])
    bench.seed = args.seed
    torch.set_num_threads(min(2, torch.get_num_threads()))
    splits = load_split(bench)
    feats = cached_features(bench, splits, ("train", "val", "test"))
    texts = {s: [t for _, _, t in splits[s]] for s in splits}
    memory = CaptionMemory.from_features(feats["train"], texts["train"], [i for i, _, _ in splits["train"]])
    model, seconds, steps = train(args.method, feats["train"], texts["train"], bench)
    model.caption_token_ids = model.target_token_ids(texts["train"])
    say(f"{args.method} (seed {args.seed}) trained: {steps} steps, {seconds:.0f} s")
    results = {s: grid(args, bench, model, memory, s, feats[s], texts[s]) for s in ("val", "test")}
    best = max(results["val"]["grid"], key=results["val"]["grid"].get)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "features_cache")}
    report = Report(
        args.out,
        settings,
        key="settings",
    )
    report["machine"]["command"] = public_command(report["machine"].get("command", ""))  # without local paths
    report.update(method=args.method, seed=args.seed, train_seconds=round(seconds, 1), results=results,
                  best_on_validation=best)  # fmt: skip
    report["ratios"] = {"best on validation / greedy, test CIDEr": ratio(results["test"]["grid"][best],
                                                                          results["test"]["greedy"])}  # fmt: skip
    report["table"] = table(args, results, best)
    report.finish(report["table"])


def grid(
    args: argparse.Namespace,
    bench: argparse.Namespace,
    model: Any,
    memory: Any,
    split: str,
    feats: Features,
    texts: list[str],
) -> dict[str, Any]:
    """Greedy, top-beam and every candidates x k x weight reranking CIDEr of one split."""
    from multimodal.captioning.consensus import CiderConsensus
    from multimodal.captioning.metrics import caption_scores

    consensus = CiderConsensus(memory.titles)
    start = time.perf_counter()
    greedy = predict(args.method, model, feats, bench)
    neighbours = memory.neighbours(feats, max(args.ks))
    out, top_beam = {}, {}
    for n in args.candidates:
        found, scores = candidates(model, feats, n, bench.max_new_tokens)
        top_beam[n] = caption_scores(found[::n], texts)["cider"]
        for k in args.ks:
            titles = [[memory.titles[r] for r in rows[:k]] for rows in neighbours]
            for w in args.weights:
                picked = consensus.pick(found, scores, titles, w)[0]
                out[f"candidates={n} k={k} weight={w}"] = caption_scores(picked, texts)["cider"]
    result = {"greedy": caption_scores(greedy, texts)["cider"], "top_beam": top_beam, "grid": out,
              "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
    say(f"{split}: greedy {result['greedy']:.4f}, top beam {top_beam}")
    return result


def table(args: argparse.Namespace, results: dict[str, Any], best: str) -> str:
    """Validation / test CIDEr of every setting, greedy and the top beam beside them."""
    weights = " | ".join(f"weight {w}" for w in args.weights)
    lines = [f"| candidates | k | {weights} |", "|---|---|" + "---|" * len(args.weights)]
    for n in args.candidates:
        for k in args.ks:
            names = [f"candidates={n} k={k} weight={w}" for w in args.weights]
            cells = [f"{results['val']['grid'][m]:.3f} / {results['test']['grid'][m]:.3f}" for m in names]
            lines.append(f"| {n} | {k} | {' | '.join(cells)} |")
    beams = ", ".join(f"{n}: {results['val']['top_beam'][n]:.3f} / {results['test']['top_beam'][n]:.3f}"
                      for n in args.candidates)  # fmt: skip
    lines.append(
        f"(validation / test CIDEr; greedy {results['val']['greedy']:.3f} / {results['test']['greedy']:.3f}; "
        f"top beam {beams}; best on validation: {best}, test {results['test']['grid'][best]:.3f})"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
