"""``multimodal prepare``: a training manifest and its photos as a litdata stream, for ``fit --data.stream``.

The stream holds every row and column of the manifest and the bytes of its photos
(:mod:`multimodal.data.litdata_prepare`); ``fit`` reads it as it reads the manifest (same splits, vocabularies and
exact resume), on one or several nodes.
"""

from __future__ import annotations

import argparse
import json

from multimodal.arguments import Parser


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="multimodal prepare",
        description="Write a manifest and its photos as litdata chunks (a local folder or a bucket prefix), to "
        "train from with `multimodal fit --data.stream OUT`.",
        epilog="examples:\n"
        "  multimodal prepare --data.manifest examples/fashion-products/metadata.csv "
        "--data.image_root examples/fashion-products/images --out runs/stream\n"
        "  multimodal prepare --data.manifest catalog.parquet --out s3://shop/train-stream/ --num_workers 8",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data.manifest", dest="manifest", required=True, help="CSV, JSONL or Parquet file or folder")
    p.add_argument("--out", required=True, help="a new or empty folder, or a bucket prefix (s3://, gs://)")
    p.add_argument(
        "--data.image_root", dest="image_root", default=None, help="where relative photo paths point (default: the "
        "manifest's folder)"
    )  # fmt: skip
    p.add_argument("--data.image_column", dest="image_column", default="image", help="the photo column (image)")
    p.add_argument(
        "--data.confine_images", dest="confine_images", action="store_true", help="photos outside the image root "
        "are unreadable, as in training with data.confine_images"
    )  # fmt: skip
    p.add_argument("--num_workers", type=int, default=1, help="litdata writer processes (default 1)")
    p.add_argument("--chunk_bytes", default="64MB", help="litdata chunk size (default 64MB)")
    return p


def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    from multimodal.errors import UserError

    if args.num_workers < 1:
        raise UserError(f"--num_workers must be at least 1, not {args.num_workers}")
    from multimodal.data.litdata_prepare import prepare

    header = prepare(args.manifest, args.out, args.image_root, args.image_column, args.confine_images,
                     num_workers=args.num_workers, chunk_bytes=args.chunk_bytes)  # fmt: skip
    print(json.dumps({k: header[k] for k in ("stream", "manifest", "rows", "columns", "version")}))
