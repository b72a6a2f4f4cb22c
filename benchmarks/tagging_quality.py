"""Tagging quality: the three fusion blocks, image-only and text-only taggers vs two logistic-regression peers.

Every method is trained on the same training ids and scored on the same test ids of one
:class:`multimodal.data.datamodule.ProductDataModule` (80/10/10 split by a stable hash of the id, unless the manifest
has a ``split`` column). The taggers are :class:`multimodal.tagging.tagger.ProductTagger` with the offline
pretrained towers (ImageNet EfficientNet-Lite0 + all-MiniLM-L6-v2), trained by a real ``lightning.Trainer.fit``;
the peer is scikit-learn's TF-IDF (word 1-2 grams) + ``LogisticRegression`` on the product text alone, one model per
attribute, its ``C`` picked on the validation split; the stronger ``peer_image`` is the same logistic regression on
the text's TF-IDF next to the *same frozen photo features* the taggers read (EfficientNet-Lite0's pooled vector,
standardised on the training split, L2-normalised, times a weight), ``C`` and the weight picked on validation. A
fusion block that cannot beat a linear model on the same features has not earned its layers.

The product text is the ``--text-columns`` (default: the title), the same for every method: the taggers' data module
joins them as the tagger joins them (``". "`` between columns, a missing value left out) for the text tower and the
n-gram head, and the peers' TF-IDF reads the same join. Each variant records the columns it was given
(``settings.text_columns``) and the columns that reached it (``info.text_columns``: none for ``image_only``).

Single-modality variants drop the other modality *at data level*: ``image_only`` sets every product's text to
unknown (the tagger sees its learned "missing text" stand-in), ``title_only`` (every text column, despite its name,
kept for the results already published) sets every product's image to
unknown (the "missing image" stand-in), in training and test alike. The unused tower is frozen (its output never
reaches the heads, so training it would only cost time).

Scores: accuracy and macro-F1 per attribute, computed by one function for every method
(:func:`benchmarks.quality.scores.attribute_scores`), and the mean macro-F1 over the attributes. Each method's
difference to the peer comes with a paired bootstrap over the test products
(:func:`benchmarks.quality.scores.paired_bootstrap`): a 95% interval and the share of resamples in which the method
is ahead, so a gap smaller than the split's noise reads as such.

    python -m benchmarks.tagging_quality --data data/fashion-products \
        --out benchmarks/results/tagging_quality.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.common import quiet_lightning, say, set_threads
from benchmarks.harness import SAMPLE, Option, Report
from benchmarks.quality import tag_report
from benchmarks.quality.tag_decisions import train_label_counts
from benchmarks.quality.tag_peer import photo_vectors, run_peer
from benchmarks.quality.tag_report import PEERS
from benchmarks.quality.tag_train import run_tagger
from benchmarks.quality.tag_variants import (
    build_datamodule,
    columns_read,
    fill_text_cache,
    settings,
    split_ids,
    use_cache,
    vision_cache,
)
from benchmarks.quality.towers import runtimes_option

ATTRIBUTES = ["gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage"]
TAGGERS = ["early", "late", "cross_attention", "image_only", "title_only"]
ALL_VARIANTS = [*TAGGERS, *PEERS]
JSON = "JSON"
OPTIONS = {
    "--data": Option("examples/fashion-products", "catalogue folder with metadata.csv and images/"),
    "--manifest": Option(None, "manifest file (default: DATA/metadata.csv)"),
    "--image-root": Option(None, "image folder (default: DATA/images)"),
    "--out": Option("benchmarks/results/tagging_quality.json", "JSON result file"),
    "--work-dir": Option("runs/benchmarks/tagging_quality",
                         "checkpoints, data reports and tower caches (empty: a temporary folder, removed)"),
    "--attributes": Option(ATTRIBUTES, "attribute columns scored"),
    "--text-columns": Option(["title"], "text columns fed to every tagger and both peers, joined in this order"),
    "--variants": Option(",".join(ALL_VARIANTS), f"comma list out of {ALL_VARIANTS}"),
    "--resume": Option(False, "keep variants already in --out that ran with the same settings"),
    "--resume-from": Option([], "also keep variants from these result files (same settings), e.g. variants run in "
                            "parallel", metavar=JSON),
    "--seed-runs": Option([], "result files of the same command with other --seed values (a file may hold several "
                          "under 'runs'): each tagger's seed-mean mean macro-F1 is reported with a paired bootstrap "
                          "against each peer", metavar=JSON),
    # Budget
    "--epochs": Option(12, "training epochs per tagger"),
    "--image-size": Option(224, "square image size for EfficientNet-Lite0"),
    "--max-train": Option(None, "use at most this many training products (smoke runs)", type=int),
    "--max-eval": Option(None, "use at most this many val and test products (smoke runs)", type=int),
    "--batch-size": Option(32),
    "--num-workers": Option(0, "image-decoding worker processes"),
    # Model and optimisation
    "--vision-trainable": Option(0, "train the last N EfficientNet stages (0: frozen)"),
    "--vision-variant": Option(0, "EfficientNet-Lite0, 1 or 2", choices=[0, 1, 2]),
    "--vision-adapter": Option(None, "peft adapters on the photo tower instead of --vision-trainable, e.g. "
                               '\'{"lora": {"r": 8, "target_modules": ["conv_pw", "conv_pwl"]}}\'', metavar=JSON),
    "--vision-cache": Option("auto", "auto/on: with a frozen vision tower, compute its outputs once (eval transform) "
                             "and reuse them", choices=["auto", "on", "off"]),
    "--text-trainable": Option(-1, "train the last N MiniLM layers (-1: all, 0: frozen)"),
    "--text-adapter": Option(None, "peft adapters on MiniLM instead of --text-trainable, e.g. "
                             '\'{"lora": {"r": 8, "alpha": 16}}\'', metavar=JSON),
    "--text-cache": Option("auto", "auto: a frozen MiniLM encodes each distinct text once (eval mode) and reuses it",
                           choices=["auto", "off"]),
    "--max-length": Option(32, "tokens kept of the joined text columns (a later column past it is cut)"),
    "--fusion-dim": Option(128),
    "--fusion-layers": Option(2),
    "--early-pooling": Option("text", "EarlyFusion pooling: the [CLS] output, the mean of all output tokens, or of "
                              "the text tokens' outputs", choices=["cls", "mean", "text"]),
    "--single-modality-fusion": Option("early", "fusion block of the image_only and title_only taggers",
                                       choices=["early", "late", "cross_attention"]),
    "--lr": Option(2e-3, "AdamW learning rate of the new layers"),
    "--encoder-lr-scale": Option(0.1, "towers train at lr * this"),
    "--weight-decay": Option(0.01),
    "--label-smoothing": Option(0.1),
    "--modality-dropout": Option(0.1),
    "--logit-adjustment": Option(0.0, "tau of the taggers' logit-adjusted loss (ProductTagger logit_adjustment: "
                                 "rare classes favoured; 0: off)"),
    "--ngram-buckets": Option(32768, "hash rows of the taggers' wide token n-gram head (ProductTagger "
                              "ngram_buckets; 0: off)"),
    "--scheduler": Option("cosine", "per-epoch LR schedule", choices=["none", "cosine"]),
    "--select": Option("best", "test the epoch with the best val mean macro-F1, or the last epoch",
                       choices=["best", "last"]),
    "--peer-c": Option([1.0, 10.0, 100.0], "LogisticRegression C values; the best on the val split (macro-F1) is "
                       "used per attribute"),
    "--peer-image-weights": Option([0.5, 1.0, 2.0], "weights of the photo features next to the TF-IDF in "
                                   "peer_image; picked with C on the val split"),
    "--bootstrap": Option(2000, "paired bootstrap resamples of the test products for each method's difference to "
                          "the peer (0: off)"),
    "--runtimes": runtimes_option("rows '<variant> [<runtime>]'"),
    "--seed": Option(0),
    "--threads": Option(1, "torch CPU threads (0: torch's default); 1 is much faster when other jobs share the cores"),
}  # fmt: skip
# --smoke: the cross-attention tagger (frozen, cached towers at 64 px) and the text peer on 32 + 16 + 16 products
SMOKE = {"data": str(SAMPLE), "work_dir": "", "variants": "cross_attention,peer", "epochs": 1, "image_size": 64,
         "max_train": 32, "max_eval": 16, "batch_size": 16, "text_trainable": 0, "max_length": 12, "fusion_dim": 16,
         "fusion_layers": 1, "ngram_buckets": 64, "peer_c": [1.0], "bootstrap": 50}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, read once: adapters from JSON, the variant list checked, the data paths filled in."""
    p = harness.parser("tagging_quality", __doc__, OPTIONS)
    args = harness.parse(p, argv, SMOKE, "benchmarks.tagging_quality")
    for flag in ("text_adapter", "vision_adapter"):  # JSON -> {peft method: {options}}, read once
        text = getattr(args, flag)
        try:
            setattr(args, flag, json.loads(text) if text else None)
        except json.JSONDecodeError as err:
            p.error(f"--{flag.replace('_', '-')} is not JSON ({err}): {text}")
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in ALL_VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {ALL_VARIANTS}")
    args.manifest = args.manifest or str(Path(args.data) / "metadata.csv")
    args.image_root = args.image_root or str(Path(args.data) / "images")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    quiet_lightning()
    set_threads(args.threads)
    with harness.work_folder(args.work_dir, "tagging-quality-") as work:
        return run(args, work)


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Every variant of ``args`` with its checkpoints and caches in ``work``; the scores against the peers."""
    sources = [*args.resume_from, *([args.out] if args.resume else [])]
    previous = tag_report.previous_results(args, sources, settings)
    base = build_datamodule(args, "early", work)
    ids = split_ids(base)
    say(f"data: {args.manifest}: train {len(ids['train'])}, val {len(ids['val'])}, test {len(ids['test'])} products; "
        f"{len(base.skipped)} skipped")  # fmt: skip
    todo = [v for v in args.variants if v not in previous]
    cache, photos = frozen_features(args, base, work, todo)
    report = Report(args.out, args, benchmark="tagging_quality")
    report.update(split={s: len(v) for s, v in ids.items()}, data_report=base.report(), variants={})
    variants = report["variants"]
    for variant in args.variants:
        if variant not in todo:
            say(f"{variant}: kept from {' / '.join(sources)} (same settings)")
            variants.update({k: v for k, v in previous.items() if k == variant or k.startswith(f"{variant} [")})
            continue
        dm = build_datamodule(args, variant, work / variant)
        assert split_ids(dm) == ids, "every method must see the same train/val/test ids"
        say(f"{variant}: start")
        if variant in PEERS:
            preds, info = run_peer(args, dm, photos if variant == "peer_image" else None)
        else:
            preds, info = run_tagger(args, variant, dm, work / variant, cache)
        info["text_columns"] = columns_read(dm.splits["train"])
        tag_report.add_variant(args, variants, variant, settings(args, variant), preds, info, base)
        report.save()  # partial results survive an interrupted run
    truth = {r.id: r.labels for r in base.splits["test"]}
    tag_report.score(args, report, truth, train_label_counts(base, args.attributes))
    report.save()
    tag_report.print_summary(report)
    say(f"wrote {args.out}")
    return report


def frozen_features(args: argparse.Namespace, base: Any, work: Path, todo: list[str]) -> tuple[Any, Any]:
    """The frozen towers' outputs the variants still to run need: the photo cache (taggers with a frozen photo
    tower), the pooled photo vectors (``peer_image``), the text cache (taggers with a frozen MiniLM)."""
    cache = None
    if any(v not in PEERS for v in todo) and use_cache(args):
        cache = vision_cache(args, base, work)
    photos = None
    if "peer_image" in todo:  # the frozen tower's pooled vectors, whether or not the taggers train that tower
        photos = photo_vectors(
            base, Path(args.image_root), cache if cache is not None else vision_cache(args, base, work)
        )
        say(f"peer_image: frozen photo features of {len(photos)} products")
    if any(v not in (*PEERS, "image_only") for v in todo) and args.text_trainable == 0 and args.text_cache != "off":
        fill_text_cache(args, base, work)
    return cache, photos


if __name__ == "__main__":
    main()
