"""``multimodal export``: one vector per product from a trained ``ProductRetriever``, to resumable shards."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import lightning as L

from multimodal.errors import UserError
from multimodal.export import (
    DTYPES,
    FORMATS,
    MANIFEST,
    Blocks,
    EmbeddingWriter,
    ExportData,
    check_same_model,
    file_sha256,
    finalize,
    finished_blocks,
    ids_sha256,
    write_json_atomic,
)
from multimodal.manifest import clean_value, read_manifest

EPILOG = """Any --data.<key> VALUE pair is passed to the data module rebuilt from the checkpoint, e.g.
  multimodal export --ckpt_path runs/retrieval/last.ckpt --data.manifest catalog.csv --data.image_root photos --out emb/
Re-running the same command after a kill finishes the missing shards only."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="multimodal export",
        description="Export one L2-normalised vector per product.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--ckpt_path", "--ckpt", required=True, help="checkpoint written by `multimodal fit` (ProductRetriever)"
    )
    p.add_argument(
        "--out", required=True, help="export folder (created; an earlier export of the same model is resumed)"
    )
    p.add_argument(
        "--columns",
        nargs="*",
        default=None,
        help="manifest columns stored with the ids (default: the data's text columns)",
    )
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float16", help="stored precision (default float16)")
    p.add_argument("--format", choices=FORMATS, default="safetensors", help="vector shard format (default safetensors)")
    p.add_argument(
        "--shard-size", type=int, default=8192, help="products per shard, rounded up to whole batches (default 8192)"
    )
    p.add_argument("--batch-size", type=int, default=None, help="products per batch (default: the data config's)")
    p.add_argument("--num-workers", type=int, default=None, help="decoding workers (default: the data config's)")
    p.add_argument("--accelerator", default="auto", help="Lightning accelerator (cpu, gpu, auto)")
    p.add_argument("--devices", default="1", help="devices / processes (e.g. 2 for a 2-process DDP export)")
    p.add_argument("--strategy", default="auto", help="Lightning strategy (ddp for several devices)")
    p.add_argument("--precision", default=None, help="Lightning precision, e.g. bf16-mixed (default: full)")
    p.add_argument("--limit-batches", type=int, default=None, help="stop after this many batches per rank (testing)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def split_overrides(rest: list[str]) -> list[str]:
    """Keep ``--data.*`` / ``--model.*`` pairs for restore; anything else is a usage error."""
    bad = [a for a in rest if a.startswith("-") and not a.startswith(("--data.", "--model."))]
    if bad:
        raise UserError(f"unknown export option(s) {bad}; see `multimodal export --help`")
    return rest


def main(argv: list[str]) -> None:
    args, rest = parser().parse_known_args(argv)
    manifest = run_export(args, split_overrides(rest), argv)
    if manifest is not None:
        state = "complete" if manifest["complete"] else f"incomplete (missing shards {manifest['missing_shards'][:10]})"
        print(
            f"export {state}: {manifest.get('count', '?')} products, dim {manifest['dim']}, "
            f"{manifest['shards']} shard(s) in {args.out}"
        )
        if manifest.get("skipped"):
            print(f"{len(manifest['skipped'])} unreadable product(s) skipped: listed under 'skipped' in export.json")


def run_export(args: argparse.Namespace, overrides: list[str], argv: list[str] | None = None) -> dict[str, Any] | None:
    """Restore the model + data, skip finished shards, predict the rest, finalize on rank 0."""
    from multimodal.restore import restore
    from multimodal.tasks.retrieval import ProductRetriever

    restored = restore(args.ckpt_path, overrides, task=ProductRetriever)
    model, dm = restored.model, restored.datamodule
    dm.attach(model)
    dataset = dm.dataset(dm.predict_split)
    ids = [r.id for r in dataset.records]
    if not ids:
        raise UserError(f"no products to export in {dm.manifest}")
    batch_size = args.batch_size or dm.batch_size
    shard_size = math.ceil(max(args.shard_size, 1) / batch_size) * batch_size
    out = Path(args.out)
    spec = {
        "model": type(model).__name__,
        "product": model.product,
        "dim": model.embed_dim,
        "dtype": args.dtype,
        "format": args.format,
        "normalisation": "l2",
        "shard_size": shard_size,
        "ids_sha256": ids_sha256(ids),
        "checkpoint": str(Path(args.ckpt_path).resolve()),
        "checkpoint_sha256": file_sha256(args.ckpt_path),
        "data_manifest": str(Path(dm.manifest).resolve()),
        "image_root": str(Path(dm.image_root).resolve()),
        "products": len(ids),
        "overrides": overrides,
    }
    out.mkdir(parents=True, exist_ok=True)
    check_same_model(out, spec)
    blocks = Blocks(len(ids), shard_size)
    done = finished_blocks(out, blocks, args.format)
    todo = [b for b in range(blocks.count) if b not in done]
    if not (out / MANIFEST).is_file():
        write_json_atomic(out / MANIFEST, {**spec, "shards": blocks.count, "complete": False})
    spec["columns"] = columns = list(args.columns) if args.columns is not None else list(dm.text_columns)
    metadata = product_metadata(dm, columns, set(ids))
    if todo:
        data = ExportData(
            dataset,
            _collate(model),
            batch_size,
            args.num_workers if args.num_workers is not None else dm.num_workers,
            todo,
            blocks,
        )
        writer = EmbeddingWriter(out, args.format, args.dtype, metadata, data, shard_size // batch_size)
        trainer = L.Trainer(
            accelerator=args.accelerator,
            devices=_devices(args.devices),
            strategy=args.strategy,
            precision=args.precision,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            use_distributed_sampler=False,
            enable_progress_bar=not args.no_progress,
            callbacks=[writer],
            limit_predict_batches=args.limit_batches,
        )
        if trainer.num_devices > 1 or trainer.num_nodes > 1:
            # Lightning relaunches this command in the other processes from sys.argv, which cli.main emptied.
            sys.argv = [sys.argv[0], "export", *(argv or [])]
        trainer.predict(model, datamodule=data, return_predictions=False)
        trainer.strategy.barrier()
        if not trainer.is_global_zero:
            return None
    return finalize(out, spec, blocks)


def _devices(value: str) -> int | str:
    return int(value) if value.isdigit() else value


def _collate(model: Any) -> Any:
    from multimodal.dataset import Collate

    return Collate(model.text_fn())


def product_metadata(dm: Any, columns: list[str], ids: set[str]) -> dict[str, dict[str, Any]]:
    """id -> {column: value} for the chosen manifest columns, plus the image path (for re-ranking)."""
    df = read_manifest(dm.manifest, [dm.id_column, *columns])
    out: dict[str, dict[str, Any]] = {}
    for rec in df.to_dict("records"):
        item = clean_value(rec[dm.id_column])
        if item in ids:
            row = {c: clean_value(rec[c]) for c in columns}
            row["image_path"] = clean_value(rec.get(dm.image_column))
            out[item] = row
    return out
