"""Tagging quality: the three fusion blocks, image-only and title-only taggers vs two logistic-regression peers.

Every method is trained on the same training ids and scored on the same test ids of one
:class:`multimodal.data.datamodule.ProductDataModule` (80/10/10 split by a stable hash of the id, unless the manifest
has a ``split`` column). The taggers are :class:`multimodal.tagging.tagger.ProductTagger` with the offline
pretrained towers (ImageNet EfficientNet-Lite0 + all-MiniLM-L6-v2), trained by a real ``lightning.Trainer.fit``;
the peer is scikit-learn's TF-IDF (word 1-2 grams) + ``LogisticRegression`` on the title alone, one model per
attribute, its ``C`` picked on the validation split; the stronger ``peer_image`` is the same logistic regression on
the title's TF-IDF next to the *same frozen photo features* the taggers read (EfficientNet-Lite0's pooled vector,
standardised on the training split, L2-normalised, times a weight), ``C`` and the weight picked on validation. A
fusion block that cannot beat a linear model on the same features has not earned its layers.

Single-modality variants drop the other modality *at data level*: ``image_only`` sets every product's text to
unknown (the tagger sees its learned "missing text" stand-in), ``title_only`` sets every product's image to
unknown (the "missing image" stand-in), in training and test alike. The unused tower is frozen (its output never
reaches the heads, so training it would only cost time).

Scores: accuracy and macro-F1 per attribute, computed by one function for every method
(:func:`benchmarks.common.attribute_scores`), and the mean macro-F1 over the attributes. Each method's difference
to the peer comes with a paired bootstrap over the test products (:func:`benchmarks.common.paired_bootstrap`):
a 95% interval and the share of resamples in which the method is ahead, so a gap smaller than the split's noise
reads as such.

    python -m benchmarks.tagging_quality --data data/fashion-products \
        --out benchmarks/results/tagging_quality.json
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    RUNTIMES,
    add_runtimes_argument,
    build_vision_cache,
    cached_text_encoder,
    cached_vision_encoder,
    deployable_checkpoint,
    format_table,
    image_key,
    machine,
    paired_bootstrap,
    quiet_lightning,
    ratio,
    runtime_apis,
    say,
    score_table,
    seed_all,
    set_threads,
    write_json,
)
from benchmarks.smoke import SAMPLE, parse

ATTRIBUTES = ["gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage"]
TAGGERS = ["early", "late", "cross_attention", "image_only", "title_only"]
PEERS = ["peer", "peer_image"]
ALL_VARIANTS = [*TAGGERS, *PEERS]
TEXT_CACHE: dict[str, torch.Tensor] = {}
# --smoke: the cross-attention tagger (frozen, cached towers at 64 px) and the title peer on 32 + 16 + 16 products
SMOKE = {"data": str(SAMPLE), "work_dir": "", "variants": "cross_attention,peer", "epochs": 1, "image_size": 64,
         "max_train": 32, "max_eval": 16, "batch_size": 16, "text_trainable": 0, "max_length": 12, "fusion_dim": 16,
         "fusion_layers": 1, "ngram_buckets": 64, "peer_c": [1.0], "bootstrap": 50}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.tagging_quality",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", default="examples/fashion-products", help="catalogue folder with metadata.csv and images/")
    p.add_argument("--manifest", default=None, help="manifest file (default: DATA/metadata.csv)")
    p.add_argument("--image-root", default=None, help="image folder (default: DATA/images)")
    p.add_argument("--out", default="benchmarks/results/tagging_quality.json", help="JSON result file")
    p.add_argument("--work-dir", default="runs/benchmarks/tagging_quality",
                   help="checkpoints, data reports and tower caches (empty: a temporary folder, removed)")  # fmt: skip
    p.add_argument("--attributes", nargs="+", default=ATTRIBUTES, help="attribute columns scored")
    p.add_argument("--text-columns", nargs="+", default=["title"], help="text columns fed to the taggers and the peer")
    p.add_argument("--variants", default=",".join(ALL_VARIANTS), help=f"comma list out of {ALL_VARIANTS}")
    p.add_argument(
        "--resume", action="store_true", help="keep variants already in --out that ran with the same settings"
    )
    p.add_argument(
        "--resume-from",
        nargs="+",
        default=[],
        metavar="JSON",
        help="also keep variants from these result files (same settings), e.g. variants run in parallel",
    )
    p.add_argument(
        "--seed-runs",
        nargs="+",
        default=[],
        metavar="JSON",
        help="result files of the same command with other --seed values (a file may hold several under 'runs'): "
        "each tagger's seed-mean mean macro-F1 is reported with a paired bootstrap against each peer",
    )
    # Budget
    p.add_argument("--epochs", type=int, default=12, help="training epochs per tagger")
    p.add_argument("--image-size", type=int, default=224, help="square image size for EfficientNet-Lite0")
    p.add_argument("--max-train", type=int, default=None, help="use at most this many training products (smoke runs)")
    p.add_argument(
        "--max-eval", type=int, default=None, help="use at most this many val and test products (smoke runs)"
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=0, help="image-decoding worker processes")
    # Model and optimisation
    p.add_argument("--vision-trainable", type=int, default=0, help="train the last N EfficientNet stages (0: frozen)")
    p.add_argument("--vision-variant", type=int, default=0, choices=[0, 1, 2], help="EfficientNet-Lite0, 1 or 2")
    p.add_argument(
        "--vision-adapter",
        default=None,
        metavar="JSON",
        help="peft adapters on the photo tower instead of --vision-trainable, e.g. "
        '\'{"lora": {"r": 8, "target_modules": ["conv_pw", "conv_pwl"]}}\'',
    )
    p.add_argument(
        "--vision-cache",
        default="auto",
        choices=["auto", "on", "off"],
        help="auto/on: with a frozen vision tower, compute its outputs once (eval transform) and reuse them",
    )
    p.add_argument("--text-trainable", type=int, default=-1, help="train the last N MiniLM layers (-1: all, 0: frozen)")
    p.add_argument(
        "--text-adapter",
        default=None,
        metavar="JSON",
        help='peft adapters on MiniLM instead of --text-trainable, e.g. \'{"lora": {"r": 8, "alpha": 16}}\'',
    )
    p.add_argument(
        "--text-cache",
        default="auto",
        choices=["auto", "off"],
        help="auto: a frozen MiniLM encodes each distinct title once (eval mode) and reuses it",
    )
    p.add_argument("--max-length", type=int, default=32, help="title tokens kept")
    p.add_argument("--fusion-dim", type=int, default=128)
    p.add_argument("--fusion-layers", type=int, default=2)
    p.add_argument(
        "--early-pooling",
        default="text",
        choices=["cls", "mean", "text"],
        help="EarlyFusion pooling: the [CLS] output, the mean of all output tokens, or of the text tokens' outputs",
    )
    p.add_argument(
        "--single-modality-fusion",
        default="early",
        choices=["early", "late", "cross_attention"],
        help="fusion block of the image_only and title_only taggers",
    )
    p.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate of the new layers")
    p.add_argument("--encoder-lr-scale", type=float, default=0.1, help="towers train at lr * this")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--modality-dropout", type=float, default=0.1)
    p.add_argument(
        "--ngram-buckets",
        type=int,
        default=32768,
        help="hash rows of the taggers' wide token n-gram head (ProductTagger ngram_buckets; 0: off)",
    )
    p.add_argument("--scheduler", default="cosine", choices=["none", "cosine"], help="per-epoch LR schedule")
    p.add_argument(
        "--select",
        default="best",
        choices=["best", "last"],
        help="test the epoch with the best val mean macro-F1, or the last epoch",
    )
    p.add_argument(
        "--peer-c",
        type=float,
        nargs="+",
        default=[1.0, 10.0, 100.0],
        help="LogisticRegression C values; the best on the val split (macro-F1) is used per attribute",
    )
    p.add_argument(
        "--peer-image-weights",
        type=float,
        nargs="+",
        default=[0.5, 1.0, 2.0],
        help="weights of the photo features next to the TF-IDF in peer_image; picked with C on the val split",
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=2000,
        help="paired bootstrap resamples of the test products for each method's difference to the peer (0: off)",
    )
    add_runtimes_argument(p, "rows '<variant> [<runtime>]'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (0: torch's default); 1 is much faster when other jobs share the cores",
    )
    args = parse(p, argv, SMOKE, "benchmarks.tagging_quality")
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
    data = Path(args.data)
    args.manifest = args.manifest or str(data / "metadata.csv")
    args.image_root = args.image_root or str(data / "images")
    return args


# ------------------------------------------------------------------------------------------------------- data
def build_datamodule(args: argparse.Namespace, variant: str, report_dir: Path) -> Any:
    """The one data module every method reads its split from; single-modality variants blank one modality."""
    from multimodal.data.datamodule import ProductDataModule

    dm = ProductDataModule(
        manifest=args.manifest,
        image_root=args.image_root,
        text_columns=args.text_columns,
        attributes=args.attributes,
        on_bad_sample="skip",
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        predict_split="test",
        report_path=str(report_dir / "data_report.json"),
    )
    caps = {"train": args.max_train, "val": args.max_eval, "test": args.max_eval}
    for split, cap in caps.items():
        if cap is not None:
            dm.splits[split] = dm.splits[split][:cap]
    if variant in ("image_only", "title_only"):
        for split, records in dm.splits.items():
            dm.splits[split] = [_drop(r, variant) for r in records]
    return dm


def _drop(record: Any, variant: str) -> Any:
    if variant == "image_only":
        return dataclasses.replace(record, texts={c: None for c in record.texts})
    return dataclasses.replace(record, image=None)


def split_ids(dm: Any) -> dict[str, list[str]]:
    return {s: [r.id for r in records] for s, records in dm.splits.items()}


# ------------------------------------------------------------------------------------------------------- peer
def run_peer(
    args: argparse.Namespace, dm: Any, photos: dict[str, Any] | None = None
) -> tuple[dict[str, dict[str, str]], dict[str, Any]]:
    """TF-IDF (word 1-2 grams) + LogisticRegression on the text, one model per attribute; C chosen on val. With
    ``photos`` (record id -> pooled frozen photo vector, see :func:`photo_vectors`) the photo features sit next to
    the TF-IDF, their weight chosen on val with C (``peer_image``)."""
    import numpy as np
    from scipy import sparse
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    def text(r: Any) -> str:
        return ". ".join(t for t in r.texts.values() if t is not None)

    name = "peer" if photos is None else "peer_image"
    train, val, test = dm.splits["train"], dm.splits["val"], dm.splits["test"]
    dense: dict[str, Any] = {}
    if photos is not None:  # standardised on train, L2-normalised; a product without a photo gets zeros + a flag
        width = len(next(iter(photos.values())))
        mean = np.mean([photos[r.id] for r in train if r.id in photos], 0)
        std = np.std([photos[r.id] for r in train if r.id in photos], 0) + 1e-6
        for r in [*train, *val, *test]:
            v = (photos[r.id] - mean) / std if r.id in photos else np.zeros(width)
            dense[r.id] = np.append(v / max(np.linalg.norm(v), 1e-6), 0.0 if r.id in photos else 1.0)
    weights = [None] if photos is None else args.peer_image_weights

    def features(vec: Any, rows: list[Any], weight: float | None) -> Any:
        x = vec.transform([text(r) for r in rows])
        if weight is None:
            return x
        return sparse.hstack([x, sparse.csr_matrix(weight * np.stack([dense[r.id] for r in rows]))]).tocsr()

    preds: dict[str, dict[str, str]] = {r.id: {} for r in test}
    info: dict[str, Any] = {"chosen_C": {}, **({"chosen_image_weight": {}} if photos is not None else {})}
    for a in args.attributes:
        rows = [r for r in train if r.labels[a] is not None]
        y = [r.labels[a] for r in rows]
        vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit([text(r) for r in rows])
        if len(set(y)) == 1:  # LogisticRegression needs two classes
            for r in test:
                preds[r.id][a] = y[0]
            continue
        val_rows = [r for r in val if r.labels[a] is not None]
        best: tuple[float, float, float | None, Any] | None = None
        for weight in weights:
            x = features(vec, rows, weight)
            for c in args.peer_c:
                clf = LogisticRegression(C=c, max_iter=3000).fit(x, y)
                if not val_rows:
                    best = (0.0, c, weight, clf)
                    break
                yv = [r.labels[a] for r in val_rows]
                pv = clf.predict(features(vec, val_rows, weight))
                f1 = f1_score(yv, pv, labels=sorted(set(yv) | set(pv)), average="macro", zero_division=0)
                if best is None or f1 > best[0]:
                    best = (f1, c, weight, clf)
        assert best is not None
        info["chosen_C"][a] = best[1]
        if photos is not None:
            info["chosen_image_weight"][a] = best[2]
        for r, label in zip(test, best[3].predict(features(vec, test, best[2])), strict=True):
            preds[r.id][a] = str(label)
        chosen = f"C={best[1]}" + ("" if best[2] is None else f", photo weight {best[2]}")
        say(f"{name}: {a}: {chosen} (val macro-F1 {best[0]:.3f})")
    return preds, info


def photo_vectors(dm: Any, image_root: Path, cache: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Record id -> the frozen photo tower's pooled vector (row 0 of the vision cache), for every readable photo."""
    from multimodal.data.images import load_image, resolve_image_path
    from multimodal.errors import BadSampleError

    out: dict[str, Any] = {}
    for r in [r for split in dm.splits.values() for r in split]:
        if r.image is None:
            continue
        try:
            key = image_key(load_image(resolve_image_path(image_root, r.image)))
        except BadSampleError:
            continue
        if key in cache:
            out[r.id] = cache[key][0].numpy()
    return out


# ----------------------------------------------------------------------------------------------------- tagger
def fusion_of(args: argparse.Namespace, variant: str) -> str:
    """The fusion block a tagger variant uses (the single-modality variants use ``--single-modality-fusion``)."""
    return args.single_modality_fusion if variant in ("image_only", "title_only") else variant


def build_tagger(args: argparse.Namespace, variant: str, cache: dict[str, torch.Tensor] | None = None) -> Any:
    """ProductTagger with the offline pretrained towers and the variant's fusion block."""
    from encoders.pretrained import EfficientNetLiteEncoder, MiniLMTextEncoder
    from fusion import CrossAttentionFusion, EarlyFusion, LateFusion
    from multimodal.tagging.tagger import ProductTagger

    fusion_name = fusion_of(args, variant)
    dim, layers = args.fusion_dim, args.fusion_layers
    fusion = {
        "early": functools.partial(
            EarlyFusion, dim=dim, layers=layers, heads=4, dropout=0.1, pooling=args.early_pooling
        ),
        "late": functools.partial(LateFusion, dim=dim, mode="gated", dropout=0.1),
        "cross_attention": functools.partial(CrossAttentionFusion, dim=dim, layers=layers, heads=4, dropout=0.1),
    }[fusion_name]
    vision_adapter, text_adapter = adapters_of(args, variant)
    vision_trainable: Any = False if variant == "title_only" else (vision_adapter or args.vision_trainable or False)
    text_trainable: Any = text_adapter or (True if args.text_trainable < 0 else (args.text_trainable or False))
    if variant == "image_only":
        text_trainable = False
    if cache is not None:
        n_tokens, width = next(iter(cache.values())).shape
        vision = cached_vision_encoder(cache, width, n_tokens - 1)
    else:
        vision = EfficientNetLiteEncoder(args.vision_variant, image_size=args.image_size, trainable=vision_trainable)
    text = MiniLMTextEncoder(pooling="mean", max_length=args.max_length, trainable=text_trainable)
    if text_trainable is False and args.text_cache != "off":
        text = cached_text_encoder(text, TEXT_CACHE)  # frozen MiniLM weights are the same in every variant
    optimizer = functools.partial(torch.optim.AdamW, lr=args.lr, weight_decay=args.weight_decay)
    scheduler = None
    if args.scheduler == "cosine":
        scheduler = functools.partial(
            torch.optim.lr_scheduler.CosineAnnealingLR, T_max=max(args.epochs, 1), eta_min=args.lr * 0.02
        )
    return ProductTagger(
        vision=vision,
        text=text,
        fusion=fusion,
        modality_dropout=args.modality_dropout,
        label_smoothing=args.label_smoothing,
        optimizer=optimizer,
        scheduler=scheduler,
        encoder_lr_scale=args.encoder_lr_scale,
        ngram_buckets=0 if variant == "image_only" else args.ngram_buckets,  # image_only never sees text
    )


def adapters_of(args: argparse.Namespace, variant: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The peft adapters (vision, text) a variant's towers get: none on a tower whose modality it drops."""
    return (
        None if variant == "title_only" else args.vision_adapter,
        None if variant == "image_only" else args.text_adapter,
    )


FUSION_CLASSES = {
    "early": "fusion.early.EarlyFusion",
    "late": "fusion.late.LateFusion",
    "cross_attention": "fusion.cross_attention.CrossAttentionFusion",
}


def tagger_config(args: argparse.Namespace, variant: str) -> dict[str, Any]:
    """:func:`build_tagger`'s model as the ``model`` section of a config (real towers, no feature caches)."""
    fusion_name = fusion_of(args, variant)
    # Trained or frozen, the tower's weights have the same names; peft adapters add theirs.
    vision_adapter, text_adapter = adapters_of(args, variant)
    vision_trainable, text_trainable = vision_adapter or False, text_adapter or False
    fusion_args: dict[str, Any] = {"dim": args.fusion_dim, "dropout": 0.1}
    if fusion_name == "late":
        fusion_args["mode"] = "gated"
    else:
        fusion_args.update(layers=args.fusion_layers, heads=4)
        if fusion_name == "early":
            fusion_args["pooling"] = args.early_pooling
    return {
        "class_path": "multimodal.tagging.tagger.ProductTagger",
        "init_args": {
            "vision": {
                "class_path": "encoders.pretrained.EfficientNetLiteEncoder",
                "init_args": {
                    "variant": args.vision_variant,
                    "image_size": args.image_size,
                    "trainable": vision_trainable,
                },  # fmt: skip
            },
            "text": {
                "class_path": "encoders.pretrained.MiniLMTextEncoder",
                "init_args": {"pooling": "mean", "max_length": args.max_length, "trainable": text_trainable},
            },
            "fusion": {"class_path": FUSION_CLASSES[fusion_name], "init_args": fusion_args},
            "modality_dropout": args.modality_dropout,
            "label_smoothing": args.label_smoothing,
            "ngram_buckets": 0 if variant == "image_only" else args.ngram_buckets,
        },
    }


def runtime_predictions(
    args: argparse.Namespace, variant: str, model: Any, dm: Any, work: Path
) -> dict[str, tuple[dict[str, dict[str, str]], dict[str, Any]]]:
    """The trained tagger as a user runs it (its checkpoint with real towers; ONNX Runtime fp32 and int8 from
    ``multimodal export-model``'s code), predicting the test split through the Python API (``predict_proba``)."""
    import numpy as np
    import pandas as pd

    data_args = {"id_column": "id", "image_column": "image", "text_columns": args.text_columns,
                 "attributes": args.attributes}  # fmt: skip
    ckpt, pretrained = deployable_checkpoint(model, tagger_config(args, variant), data_args, work / "deployed.ckpt")
    say(f"{variant}: deployable checkpoint ({len(pretrained)} tower tensors from the pretrained files)")
    apis, export = runtime_apis(ckpt, work, args.runtimes)
    test = dm.splits["test"]
    df = pd.DataFrame(
        [{"id": r.id, "image": str(Path(args.image_root) / r.image) if r.image else None, **r.texts} for r in test]
    )
    probs: dict[str, dict[str, pd.DataFrame]] = {}
    out: dict[str, tuple[dict[str, dict[str, str]], dict[str, Any]]] = {}
    for label, api in apis.items():
        start = time.perf_counter()
        probs[label] = api.predict_proba(df)
        seconds = time.perf_counter() - start
        preds = {i: {a: str(probs[label][a].loc[i].idxmax()) for a in args.attributes} for i in df["id"]}
        info: dict[str, Any] = {"predict_seconds": round(seconds, 1), "products": len(df)}
        if label != RUNTIMES["torch"] and export:
            info["export_seconds"] = export["export_seconds"]
            info["max_abs_diff_at_export"] = {g: v["max_abs_diff"] for g, v in export["graphs"].items()}
        out[label] = (preds, info)
        say(f"{variant} [{label}]: predicted {len(df)} test products in {seconds:.1f}s")
    reference = RUNTIMES["torch"] if RUNTIMES["torch"] in probs else None
    for label, (preds, info) in out.items():
        if reference and label != reference:
            ref_probs, ref_preds = probs[reference], out[reference][0]
            info["max_abs_prob_diff_vs_torch"] = float(
                max(np.nanmax(np.abs(probs[label][a].to_numpy() - ref_probs[a].to_numpy())) for a in args.attributes)
            )
            same = sum(preds[i][a] == ref_preds[i][a] for i in preds for a in args.attributes)
            info["top1_same_as_torch"] = round(same / (len(preds) * len(args.attributes)), 4)
    return out


def progress_callback(variant: str, every: int) -> Any:
    import lightning as L

    class Progress(L.Callback):
        """Prints loss and speed every ``every`` steps and the val scores after every epoch."""

        def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self.t0, self.seen = time.perf_counter(), 0

        def on_train_batch_end(
            self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
        ) -> None:
            self.seen += len(batch["ids"])
            if (i + 1) % every == 0:
                loss = float(outputs["loss"]) if isinstance(outputs, dict) else float("nan")
                rate = self.seen / (time.perf_counter() - self.t0)
                say(
                    f"{variant}: epoch {trainer.current_epoch} step {i + 1}/{trainer.num_training_batches} "
                    f"loss {loss:.3f} ({rate:.1f} samples/s)"
                )

        def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            # Not on_validation_epoch_end: callbacks run before the task's hook that logs this epoch's metrics.
            m = trainer.callback_metrics
            if "val/mean_macro_f1" in m:
                say(
                    f"{variant}: epoch {trainer.current_epoch} val mean acc {float(m['val/mean_acc']):.3f} "
                    f"mean macro-F1 {float(m['val/mean_macro_f1']):.3f}"
                )

    return Progress()


def run_tagger(
    args: argparse.Namespace, variant: str, dm: Any, work: Path, cache: dict[str, torch.Tensor] | None
) -> tuple[dict[str, dict[str, str]], dict[str, Any]]:
    """Fit one tagger with ``lightning.Trainer.fit``; predict the test split with the selected epoch."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    seed_all(args.seed)
    model = build_tagger(args, variant, cache)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    say(f"{variant}: {trainable / 1e6:.2f}M trainable parameters; {len(dm.splits['train'])} train products")
    ckpt = ModelCheckpoint(
        dirpath=work / "checkpoints",
        monitor="val/mean_macro_f1",
        mode="max",
        save_top_k=1,
        filename="best",
        save_weights_only=True,
        enable_version_counter=False,
    )
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(work),
        callbacks=[ckpt, progress_callback(variant, every=10)],
    )
    t0 = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    fit_s = time.perf_counter() - t0
    ckpt_path = "best" if args.select == "best" and ckpt.best_model_path else None
    best_epoch = None
    if ckpt_path:
        best_epoch = torch.load(ckpt.best_model_path, map_location="cpu", weights_only=True).get("epoch")
    say(f"{variant}: fit took {fit_s:.0f}s; testing {'best epoch ' + str(best_epoch) if ckpt_path else 'last epoch'}")
    tm = trainer.test(model, datamodule=dm, ckpt_path=ckpt_path, verbose=False)[0]
    outputs = trainer.predict(model, datamodule=dm, ckpt_path=ckpt_path)
    preds: dict[str, dict[str, str]] = {}
    for out in outputs:
        for i, item_id in enumerate(out["ids"]):
            preds[item_id] = {a: model.vocabularies[a][int(out["probs"][a][i].argmax())] for a in args.attributes}
    runtimes = runtime_predictions(args, variant, model.cpu().eval(), dm, work) if args.runtimes else {}
    info = {
        "fit_seconds": round(fit_s, 1),
        "trainable_params": trainable,
        "selected_epoch": best_epoch,
        "best_val_mean_macro_f1": float(ckpt.best_model_score) if ckpt.best_model_score is not None else None,
        "torchmetrics_test_mean_macro_f1": tm.get("test/mean_macro_f1"),
        "torchmetrics_test_mean_acc": tm.get("test/mean_acc"),
        "skipped_products": len(dm.skipped),
    }
    saved = list((work / "checkpoints").glob("*.ckpt"))
    info["checkpoint_mb"] = round(saved[0].stat().st_size / 1e6, 1) if saved else None
    info["trained_weights_mb"] = round(4 * trainable / 1e6, 1)  # fp32 bytes of what training changed
    info["train_samples_per_s"] = round(len(dm.splits["train"]) * trainer.current_epoch / fit_s, 1)
    for p in [*saved, work / "deployed.ckpt"]:
        p.unlink(missing_ok=True)  # hundreds of MB each; the predictions are what the benchmark keeps
    shutil.rmtree(work / "onnx", ignore_errors=True)
    info["runtimes"] = runtimes
    return preds, info


# ------------------------------------------------------------------------------------------------------- main
def use_cache(args: argparse.Namespace) -> bool:
    trains = args.vision_trainable > 0 or bool(args.vision_adapter)
    if args.vision_cache == "on" and trains:
        raise SystemExit("error: --vision-cache on needs a frozen vision tower (--vision-trainable 0, no adapter)")
    return args.vision_cache == "on" or (args.vision_cache == "auto" and not trains)


def vision_cache(args: argparse.Namespace, dm: Any, work: Path) -> dict[str, torch.Tensor]:
    """Frozen EfficientNet-Lite0 outputs for every photo of the catalogue, computed once (kept in --work-dir)."""
    from encoders.pretrained import EfficientNetLiteEncoder

    records = [r for split in dm.splits.values() for r in split]
    lite = f"_lite{args.vision_variant}" if args.vision_variant else ""
    name = f"vision_cache_{Path(args.manifest).resolve().parent.name}_{len(records)}_{args.image_size}px{lite}.pt"
    path = work / name
    if path.is_file():
        cache = torch.load(path, map_location="cpu", weights_only=True)
        say(f"vision cache: {len(cache)} photos from {path}")
        return cache
    encoder = EfficientNetLiteEncoder(args.vision_variant, image_size=args.image_size, trainable=False)
    cache = build_vision_cache(records, Path(args.image_root), encoder)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(cache, path)
    say(f"vision cache: {len(cache)} photos computed, saved to {path}")
    return cache


def fill_text_cache(args: argparse.Namespace, dm: Any, work: Path) -> None:
    """Frozen MiniLM outputs for every distinct title of the catalogue, computed once (kept in --work-dir)."""
    from encoders.pretrained import MiniLMTextEncoder
    from multimodal.towers import JoinedText

    records = [r for split in dm.splits.values() for r in split]
    path = work / f"text_cache_{Path(args.manifest).resolve().parent.name}_{len(records)}_{args.max_length}tok.pt"
    if path.is_file():
        TEXT_CACHE.update(torch.load(path, map_location="cpu", weights_only=True))
        say(f"text cache: {len(TEXT_CACHE)} titles from {path}")
        return
    encoder = cached_text_encoder(
        MiniLMTextEncoder(pooling="mean", max_length=args.max_length, trainable=False), TEXT_CACHE
    )
    tokenize = JoinedText(encoder.tokenizer, args.max_length)
    columns = args.text_columns
    for start in range(0, len(records), 64):
        chunk = records[start : start + 64]
        encoder(**tokenize({c: [r.texts[c] for r in chunk] for c in columns}))
        if (start // 64) % 5 == 0:
            say(f"text cache: {start + len(chunk)}/{len(records)} titles")
    encoder(**tokenize({c: [None] for c in columns}))  # the empty text of a product without one
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(dict(TEXT_CACHE), path)
    say(f"text cache: {len(TEXT_CACHE)} titles computed, saved to {path}")


def settings(args: argparse.Namespace, variant: str) -> dict[str, Any]:
    """The settings a variant's result depends on (used by --resume)."""
    common = {
        "manifest": str(Path(args.manifest)),  # as given: results files carry no machine paths
        "attributes": args.attributes,
        "text_columns": args.text_columns,
        "max_train": args.max_train,
        "max_eval": args.max_eval,
        "seed": args.seed,
    }
    if variant == "peer":
        return {**common, "peer_c": args.peer_c}
    if variant == "peer_image":
        return {**common, "peer_c": args.peer_c, "peer_image_weights": args.peer_image_weights,
                "image_size": args.image_size}  # fmt: skip
    keys = [
        "epochs",
        "image_size",
        "batch_size",
        "vision_trainable",
        "vision_cache",
        "text_trainable",
        "text_cache",
        "max_length",
        "fusion_dim",
        "fusion_layers",
        "lr",
        "encoder_lr_scale",
        "weight_decay",
        "label_smoothing",
        "modality_dropout",
        "scheduler",
        "select",
    ]
    extra = {"single_modality_fusion": args.single_modality_fusion} if variant in ("image_only", "title_only") else {}
    vision_adapter, text_adapter = adapters_of(args, variant)
    if text_adapter:
        extra["text_adapter"] = text_adapter
    if vision_adapter:
        extra["vision_adapter"] = vision_adapter
    if args.vision_variant:  # recorded when not Lite0, the tower of results from before the option existed
        extra["vision_variant"] = args.vision_variant
    if variant != "image_only":
        extra["ngram_buckets"] = args.ngram_buckets
    # Recorded only when not [CLS], the pooling of results from before the option existed.
    if fusion_of(args, variant) == "early" and args.early_pooling != "cls":
        extra["early_pooling"] = args.early_pooling
    return {**common, **{k: getattr(args, k) for k in keys}, **extra}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    quiet_lightning()
    set_threads(args.threads)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="tagging-quality-"))
    try:
        return run(args, work)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Every variant of ``args`` with its checkpoints and caches in ``work``; the scores against the peers."""
    previous: dict[str, Any] = {}  # per variant, the first result recorded with this command's settings
    sources = [*args.resume_from, *([args.out] if args.resume else [])]
    for source in sources:
        if Path(source).is_file():
            for variant, record in json.loads(Path(source).read_text()).get("variants", {}).items():
                base = variant.split(" [")[0]  # "<variant> [<runtime>]": a runtime row of that variant
                stored = {k: v for k, v in record.get("settings", {}).items() if k != "runtime"}
                if base in args.variants and stored == settings(args, base):
                    previous.setdefault(variant, record)
    base = build_datamodule(args, "early", work)
    ids = split_ids(base)
    say(
        f"data: {args.manifest}: train {len(ids['train'])}, val {len(ids['val'])}, test {len(ids['test'])} products; "
        f"{len(base.skipped)} skipped"
    )
    truth_by_id = {r.id: r.labels for r in base.splits["test"]}
    kept = [v for v in args.variants if v in previous]
    todo = [v for v in args.variants if v not in kept]
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
    variants: dict[str, Any] = {}
    payload: dict[str, Any] = {
        "benchmark": "tagging_quality",
        "machine": machine(),
        "args": vars(args),
        "split": {s: len(v) for s, v in ids.items()},
        "data_report": base.report(),
        "variants": variants,
    }
    for variant in args.variants:
        if variant in kept:
            say(f"{variant}: kept from {' / '.join(sources)} (same settings)")
            variants[variant] = previous[variant]
            variants.update({k: v for k, v in previous.items() if k.startswith(f"{variant} [")})
            continue
        dm = build_datamodule(args, variant, work / variant)
        assert split_ids(dm) == ids, "every method must see the same train/val/test ids"
        say(f"{variant}: start")
        if variant in PEERS:
            preds, info = run_peer(args, dm, photos if variant == "peer_image" else None)
        else:
            preds, info = run_tagger(args, variant, dm, work / variant, cache)
        variants[variant] = {"settings": settings(args, variant), "info": info, "predictions": preds}
        for label, (runtime_preds, runtime_info) in info.pop("runtimes", {}).items():
            variants[f"{variant} [{label}]"] = {"settings": {**settings(args, variant), "runtime": label},
                                                "info": runtime_info, "predictions": runtime_preds}  # fmt: skip
        for name in [v for v in variants if v == variant or v.startswith(f"{variant} [")]:
            single = score_table(*_truth_and_preds(truth_by_id, variants[name]["predictions"], args.attributes),
                                 args.attributes)  # fmt: skip
            say(f"{name}: test mean acc {single['mean_acc']:.3f}, mean macro-F1 {single['mean_macro_f1']:.3f}")
        write_json(args.out, payload)  # partial results survive an interrupted run
    # Score every method on the test ids that all of them predicted (a product skipped for a bad image is out).
    common = set(truth_by_id)
    for v in variants.values():
        common &= set(v["predictions"])
    common_ids = [i for i in truth_by_id if i in common]
    results = {}
    for name, v in variants.items():
        truth = {a: [truth_by_id[i][a] for i in common_ids] for a in args.attributes}
        preds = {a: [v["predictions"][i][a] for i in common_ids] for a in args.attributes}
        results[name] = score_table(truth, preds, args.attributes)
    table = format_table(results, args.attributes)
    payload.update({"test_products_scored": len(common_ids), "results": results, "table_markdown": table})
    truth = {a: [truth_by_id[i][a] for i in common_ids] for a in args.attributes}
    for peer_name in [p for p in PEERS if p in results]:
        peer = results[peer_name]["mean_macro_f1"]
        peer_preds = {a: [variants[peer_name]["predictions"][i][a] for i in common_ids] for a in args.attributes}
        versus: dict[str, Any] = payload.setdefault(f"vs_{peer_name}", {})
        for n, r in results.items():
            if n in PEERS:
                continue
            d: dict[str, Any] = {
                "mean_macro_f1_diff": r["mean_macro_f1"] - peer,
                "beats_peer": r["mean_macro_f1"] > peer,
            }
            if args.bootstrap > 0:
                preds = {a: [variants[n]["predictions"][i][a] for i in common_ids] for a in args.attributes}
                d["bootstrap"] = paired_bootstrap(truth, preds, peer_preds, args.attributes, args.bootstrap, args.seed)
            versus[n] = d
    payload["ratios"] = {f"{n} / {p}, mean macro-F1": ratio(r["mean_macro_f1"], results[p]["mean_macro_f1"])
                         for p in PEERS if p in results for n, r in results.items() if n not in PEERS}  # fmt: skip
    if args.seed_runs:
        payload["seeds"] = seed_means(args, variants, truth, common_ids)
    write_json(args.out, payload)
    print()
    print(
        f"Test split: {len(common_ids)} products; acc / macro-F1 per attribute (macro-F1: sklearn, labels in "
        f"y_true or y_pred, unknown true labels left out)"
    )
    print(table)
    for peer_name in PEERS:
        for name, d in payload.get(f"vs_{peer_name}", {}).items():
            verdict = "beats" if d["beats_peer"] else "does not beat"
            line = f"{name:16s} mean macro-F1 vs {peer_name}: {d['mean_macro_f1_diff']:+.3f} ({verdict} it)"
            if "bootstrap" in d:
                b = d["bootstrap"]
                line += (
                    f"; paired bootstrap 95% interval [{b['ci95_low']:+.3f}, {b['ci95_high']:+.3f}], "
                    f"ahead in {100 * b['share_ahead']:.0f}% of {b['samples']} resamples"
                )
            print(line)
    for name, d in payload.get("seeds", {}).items():
        print(f"{name:16s} mean macro-F1 over seeds {d['seeds']}: {d['mean_macro_f1']:.3f} "
              f"(per seed {', '.join(f'{x:.3f}' for x in d['per_seed'])})")  # fmt: skip
        for peer_name, b in d["vs"].items():
            interval = f"[{b['ci95_low']:+.3f}, {b['ci95_high']:+.3f}]"
            print(f"{'':16s} vs {peer_name} {d['peers'][peer_name]:.3f}: {b['diff']:+.3f}; paired bootstrap 95% "
                  f"interval {interval}, ahead in {100 * b['share_ahead']:.0f}%")  # fmt: skip
    for name, v in variants.items():
        if "top1_same_as_torch" in v["info"]:
            i = v["info"]
            same, diff = 100 * i["top1_same_as_torch"], i["max_abs_prob_diff_vs_torch"]
            print(f"{name}: top-1 the same as torch eager for {same:.1f}% of (product, attribute) pairs; "
                  f"max |probability - torch| {diff:.1e}")  # fmt: skip
    say(f"wrote {args.out}")
    return payload


def seed_runs(paths: list[str]) -> list[dict[str, Any]]:
    """Result payloads in ``paths``: a tagging_quality output, or a file holding several under ``runs``."""
    out = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise SystemExit(f"--seed-runs: cannot read {path}: {e}") from None
        out += list(data["runs"].values()) if "runs" in data else [data]
    return out


def seed_means(
    args: argparse.Namespace, variants: dict[str, Any], truth: dict[str, list[str | None]], ids: list[str]
) -> dict[str, Any]:
    """Per tagger of this run: its predictions and those of ``--seed-runs`` runs with the same settings but another
    seed, their mean macro-F1 each and on average, and the paired bootstrap of that average against each peer (the
    peers do not depend on the seed: scikit-learn's lbfgs is deterministic)."""

    def unseeded(s: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in s.items() if k != "seed"}

    runs = seed_runs(args.seed_runs)
    out: dict[str, Any] = {}
    for name, record in variants.items():
        if name in PEERS or " [" in name:
            continue
        found = {args.seed: record["predictions"]}
        for run in runs:
            other = run.get("variants", {}).get(name)
            if other and unseeded(other["settings"]) == unseeded(record["settings"]):
                found.setdefault(other["settings"]["seed"], other["predictions"])
        if len(found) < 2:
            continue
        short = {seed: len(set(ids) - set(p)) for seed, p in found.items() if set(ids) - set(p)}
        if short:  # a seed that did not predict every scored test product cannot be paired on the same draws
            say(f"--seed-runs: {name} left out: seed(s) {short} lack that many of the {len(ids)} scored test products")
            continue
        per_seed = {seed: {a: [p[i][a] for i in ids] for a in args.attributes} for seed, p in sorted(found.items())}
        scores = [score_table(truth, p, args.attributes)["mean_macro_f1"] for p in per_seed.values()]
        mean = sum(scores) / len(scores)
        entry: dict[str, Any] = {"seeds": list(per_seed), "per_seed": scores, "mean_macro_f1": mean, "peers": {},
                                 "vs": {}}  # fmt: skip
        for peer_name in [p for p in PEERS if p in variants]:
            peer = {a: [variants[peer_name]["predictions"][i][a] for i in ids] for a in args.attributes}
            entry["peers"][peer_name] = score_table(truth, peer, args.attributes)["mean_macro_f1"]
            entry["vs"][peer_name] = paired_bootstrap(
                truth, list(per_seed.values()), peer, args.attributes, max(args.bootstrap, 1), args.seed
            )
        out[name] = entry
    return out


def _truth_and_preds(
    truth_by_id: dict[str, dict[str, str | None]], preds: dict[str, dict[str, str]], attributes: list[str]
) -> tuple[dict[str, list[str | None]], dict[str, list[str]]]:
    ids = [i for i in truth_by_id if i in preds]
    return (
        {a: [truth_by_id[i][a] for i in ids] for a in attributes},
        {a: [preds[i][a] for i in ids] for a in attributes},
    )


if __name__ == "__main__":
    main()
