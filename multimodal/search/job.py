"""``multimodal export`` (or ``predict``) on a retriever: an export folder of product vectors and their
products table."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from multimodal.batch_job import Job


def export_vectors(job: Job) -> dict[str, Any] | None:
    """A retriever's job: an export folder of product vectors and their products table."""
    from multimodal.search import export
    from multimodal.search.predictor import Retriever

    args, source, cols = job.args, job.source, job.loaded.columns
    retriever = Retriever(job.loaded)
    dataset, df = job.inputs(retriever, args.columns)
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
    spec = job.spec(
        dataset,
        model=type(model).__name__,
        product=model.product,
        dim=model.embed_dim,
        dtype=args.dtype,
        format=args.format,
        normalisation="l2",
        columns=columns,
        data_manifest=str(source.resolve()),
        image_root=str((job.image_root or (source if source.is_dir() else source.parent)).resolve()),
    )
    sink = export.ShardSink(Path(args.out), args.format, args.dtype, metadata, job.loaded.checkpoint_file())
    return export.summarise(job.run(retriever, dataset, sink, spec), source, args.out)
