"""What a tagging_quality variant is: the one split every method reads (one modality blanked for the
single-modality variants), the frozen towers' outputs computed once per catalogue and kept in the work folder, its
:class:`multimodal.tagging.tagger.ProductTagger` on those cached towers, the same model as a config with the real
towers (for the deployable checkpoint), and the settings its result depends on (for ``--resume``)."""

from __future__ import annotations

import argparse
import dataclasses
import functools
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import say
from benchmarks.quality.towers import build_vision_cache, cached_text_encoder, cached_vision_encoder

# Frozen MiniLM outputs by token ids, shared by every tagger of the run (the frozen weights are the same in each).
TEXT_CACHE: dict[str, torch.Tensor] = {}


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
    return dataclasses.replace(record, photos=[], ignored_photos=[])


def columns_read(records: list[Any]) -> list[str]:
    """The text columns that reach a method: those with a value in some record (none for ``image_only``)."""
    columns = list(records[0].texts) if records else []
    return [c for c in columns if any(r.texts[c] is not None for r in records)]


def split_ids(dm: Any) -> dict[str, list[str]]:
    return {s: [r.id for r in records] for s, records in dm.splits.items()}


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
    """Frozen MiniLM outputs for every distinct text of the catalogue (its ``--text-columns`` joined as the taggers
    join them), computed once (kept in --work-dir, one file per column list)."""
    from encoders.pretrained import MiniLMTextEncoder
    from multimodal.towers import JoinedText

    records = [r for split in dm.splits.values() for r in split]
    columns = args.text_columns
    named = "" if columns == ["title"] else "_" + "+".join(columns)  # the title alone keeps its older file name
    name = f"text_cache_{Path(args.manifest).resolve().parent.name}{named}_{len(records)}_{args.max_length}tok.pt"
    path = work / name
    if path.is_file():
        TEXT_CACHE.update(torch.load(path, map_location="cpu", weights_only=True))
        say(f"text cache: {len(TEXT_CACHE)} texts from {path}")
        return
    encoder = cached_text_encoder(
        MiniLMTextEncoder(pooling="mean", max_length=args.max_length, trainable=False), TEXT_CACHE
    )
    tokenize = JoinedText(encoder.tokenizer, args.max_length)
    for start in range(0, len(records), 64):
        chunk = records[start : start + 64]
        encoder(**tokenize({c: [r.texts[c] for r in chunk] for c in columns}))
        if (start // 64) % 5 == 0:
            say(f"text cache: {start + len(chunk)}/{len(records)} texts")
    encoder(**tokenize({c: [None] for c in columns}))  # the empty text of a product without one
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(dict(TEXT_CACHE), path)
    say(f"text cache: {len(TEXT_CACHE)} texts computed, saved to {path}")


def fusion_of(args: argparse.Namespace, variant: str) -> str:
    """The fusion block a tagger variant uses (the single-modality variants use ``--single-modality-fusion``)."""
    return args.single_modality_fusion if variant in ("image_only", "title_only") else variant


def adapters_of(args: argparse.Namespace, variant: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The peft adapters (vision, text) a variant's towers get: none on a tower whose modality it drops."""
    return (
        None if variant == "title_only" else args.vision_adapter,
        None if variant == "image_only" else args.text_adapter,
    )


def build_tagger(args: argparse.Namespace, variant: str, cache: dict[str, torch.Tensor] | None = None) -> Any:
    """:func:`tagger_config`'s ProductTagger as it trains: the towers' trainable settings, a frozen photo tower read
    from ``cache`` and a frozen MiniLM from the shared title cache, the optimizer and the schedule."""
    from multimodal.tagging.tagger import ProductTagger

    spec = tagger_config(args, variant)["init_args"]
    vision_adapter, text_adapter = adapters_of(args, variant)
    vision_trainable: Any = False if variant == "title_only" else (vision_adapter or args.vision_trainable or False)
    text_trainable: Any = text_adapter or (True if args.text_trainable < 0 else (args.text_trainable or False))
    if variant == "image_only":
        text_trainable = False
    if cache is not None:
        n_tokens, width = next(iter(cache.values())).shape
        vision = cached_vision_encoder(cache, width, n_tokens - 1)
    else:
        vision = _class(spec["vision"])(**{**spec["vision"]["init_args"], "trainable": vision_trainable})
    text = _class(spec["text"])(**{**spec["text"]["init_args"], "trainable": text_trainable})
    if text_trainable is False and args.text_cache != "off":
        text = cached_text_encoder(text, TEXT_CACHE)  # frozen MiniLM weights are the same in every variant
    scheduler = None
    if args.scheduler == "cosine":
        scheduler = functools.partial(
            torch.optim.lr_scheduler.CosineAnnealingLR, T_max=max(args.epochs, 1), eta_min=args.lr * 0.02
        )
    return ProductTagger(
        vision=vision,
        text=text,
        fusion=functools.partial(_class(spec["fusion"]), **spec["fusion"]["init_args"]),
        optimizer=functools.partial(torch.optim.AdamW, lr=args.lr, weight_decay=args.weight_decay),
        scheduler=scheduler,
        encoder_lr_scale=args.encoder_lr_scale,
        **{k: spec[k] for k in ("modality_dropout", "label_smoothing", "ngram_buckets", "logit_adjustment")},
    )


def _class(spec: dict[str, Any]) -> Any:
    """The class a config's ``class_path`` names."""
    import importlib

    module, name = spec["class_path"].rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


FUSION_CLASSES = {
    "early": "fusion.early.EarlyFusion",
    "late": "fusion.late.LateFusion",
    "cross_attention": "fusion.cross_attention.CrossAttentionFusion",
}


def tagger_config(args: argparse.Namespace, variant: str) -> dict[str, Any]:
    """The variant's tagger as the ``model`` section of a config (real towers, no feature caches): what
    :func:`build_tagger` builds and the deployable checkpoint stores."""
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
                },
            },
            "text": {
                "class_path": "encoders.pretrained.MiniLMTextEncoder",
                "init_args": {"pooling": "mean", "max_length": args.max_length, "trainable": text_trainable},
            },
            "fusion": {"class_path": FUSION_CLASSES[fusion_name], "init_args": fusion_args},
            "modality_dropout": args.modality_dropout,
            "label_smoothing": args.label_smoothing,
            "ngram_buckets": 0 if variant == "image_only" else args.ngram_buckets,  # image_only never sees text
            "logit_adjustment": args.logit_adjustment,
        },
    }


# What a trained variant's result depends on besides the data (and the variant's own extras).
TRAINING_SETTINGS = ("epochs image_size batch_size vision_trainable vision_cache text_trainable text_cache max_length "
                     "fusion_dim fusion_layers lr encoder_lr_scale weight_decay label_smoothing modality_dropout "
                     "scheduler select").split()  # fmt: skip


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
    extra = {"single_modality_fusion": args.single_modality_fusion} if variant in ("image_only", "title_only") else {}
    vision_adapter, text_adapter = adapters_of(args, variant)
    if text_adapter:
        extra["text_adapter"] = text_adapter
    if vision_adapter:
        extra["vision_adapter"] = vision_adapter
    if args.logit_adjustment:  # recorded when on: results from before the option existed ran without it
        extra["logit_adjustment"] = args.logit_adjustment
    if args.vision_variant:  # recorded when not Lite0, the tower of results from before the option existed
        extra["vision_variant"] = args.vision_variant
    if variant != "image_only":
        extra["ngram_buckets"] = args.ngram_buckets
    # Recorded only when not [CLS], the pooling of results from before the option existed.
    if fusion_of(args, variant) == "early" and args.early_pooling != "cls":
        extra["early_pooling"] = args.early_pooling
    return {**common, **{k: getattr(args, k) for k in TRAINING_SETTINGS}, **extra}
