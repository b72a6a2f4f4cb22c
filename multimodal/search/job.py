"""``multimodal export`` (or ``predict``) on a retriever: an export folder of product vectors and their
products table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from multimodal.batch_job import job_inputs, job_spec

if TYPE_CHECKING:
    from multimodal.writers import JobOptions


def export_vectors(
    args: argparse.Namespace,
    loaded: Any,
    source: Path,
    image_root: Path | None,
    options: JobOptions,
    relaunch: list[str],
) -> dict[str, Any] | None:
    """A retriever's job: an export folder of product vectors and their products table."""
    from multimodal.search import export
    from multimodal.search.predictor import Retriever
    from multimodal.writers import run_job

    retriever, cols = Retriever(loaded), loaded.columns
    dataset, df = job_inputs(retriever, source, args, image_root, args.columns)
    if df is not None:
        df, columns, dropped = export.metadata_columns(df, cols.id, cols.image, args.columns, str(source))
        for reason in dropped:
            print(f"not stored (give --columns to choose): {reason}", file=sys.stderr)
        ids = {r.id for r in dataset.records if r.error is None}
        metadata = export.product_metadata(df, ids, cols.id, cols.image, columns)
    else:  # a folder of photos: no columns to store
        columns = list(args.columns) if args.columns is not None else list(cols.texts)
        metadata = {r.id: {"image_path": r.image} for r in dataset.records}
    model = retriever.model
    spec = job_spec(
        loaded,
        dataset,
        model=type(model).__name__,
        product=model.product,
        dim=model.embed_dim,
        dtype=args.dtype,
        format=args.format,
        normalisation="l2",
        columns=columns,
        data_manifest=str(source.resolve()),
        image_root=str((image_root or (source if source.is_dir() else source.parent)).resolve()),
    )
    sink = export.ShardSink(Path(args.out), args.format, args.dtype, metadata, loaded.checkpoint_file())
    summary = run_job(model, dataset, retriever.collate(), sink, spec, retriever.rows, options, relaunch)
    return export.summarise(summary, source, args.out)
