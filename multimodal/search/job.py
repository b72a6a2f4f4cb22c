"""``multimodal export`` (or ``predict``) on a retriever: an export folder of product vectors and their
products table."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from multimodal.batch_job import Job, located
from multimodal.data.split_rows import manifest_folder


def _manifest_row(record: Any) -> dict[str, Any]:
    """The manifest row of a product, carried to the sink, which reads the shard's metadata by it."""
    return {"manifest_row": record.row}


def export_vectors(job: Job) -> dict[str, Any] | None:
    """A retriever's job: an export folder of product vectors and their products table."""
    from multimodal.search.predictor import Retriever

    retriever = Retriever(job.loaded)
    if job.loaded.path.is_dir():  # an ONNX export: recorded as the slim install's query encoder
        from multimodal.lite.retrieval import export_recorded

        return vectors_job(job, retriever, type(retriever.model).__name__, **export_recorded(job.loaded))
    return vectors_job(job, retriever, type(retriever.model).__name__, job.loaded.checkpoint_file())


def vectors_job(
    job: Job, retriever: Any, model_name: str, checkpoint: Path | None, **recorded: Any
) -> dict[str, Any] | None:
    """The export job with ``retriever`` (a retriever's Python API, eager or torch-free).

    Args:
        model_name: the model class the job records (the same on both runtimes for one ONNX export).
        checkpoint: linked into the export folder for the re-ranker (None: none is at hand).
        recorded: more keys of the job's identity and ``export.json``.
    """
    from multimodal.search import export

    args, source, cols = job.args, job.source, job.loaded.columns
    dataset, table = job.inputs(retriever, args.columns)
    record_fields = None
    if table is not None:  # each shard's metadata is read from the manifest rows of that shard
        columns, dropped = export.stored_columns(table, cols.id, cols.image, args.columns, str(source))
        for reason in dropped:
            print(f"not stored (give --columns to choose): {reason}", file=sys.stderr)
        metadata: Any = export.ManifestMetadata(table, cols.image, columns, str(source))
        record_fields = _manifest_row
    else:  # a folder of photos: no columns to store
        columns = list(args.columns) if args.columns is not None else list(cols.texts)
        metadata = {r.id: {"image_path": r.image} for r in dataset.records}
    model = retriever.model
    dim, cut = kept_width(args, int(model.embed_dim))
    spec = job.spec(
        dataset,
        model=model_name,
        product=model.product,
        dim=dim,
        **cut,
        dtype=args.dtype,
        format=args.format,
        normalisation="l2",
        columns=columns,
        data_manifest=located(source),
        image_root=located(job.image_root or (source if table is None else manifest_folder(source))),
        **recorded,
    )
    sink = export.ShardSink(Path(args.out), args.format, args.dtype, metadata, checkpoint, dim)
    return export.summarise(job.run(retriever, dataset, sink, spec, record_fields), source, args.out)


def kept_width(args: Any, width: int) -> tuple[int, dict[str, int]]:
    """The width an export keeps of the model's ``width`` (``--dim``: its first dimensions, renormalised by the sink)
    and, when that is a cut, ``{"cut_from": width}`` for its identity and ``export.json``."""
    from multimodal.search.matryoshka import check_dim

    dim = getattr(args, "dim", None)  # a job request made without the command's parser has none
    if dim is None or dim == width:
        return width, {}
    check_dim(dim, width, "the model")
    return int(dim), {"cut_from": width}


def row_schema(columns: Any, top_k: int = 1) -> list[tuple[str, str]]:
    """The prediction columns of one output row and their Spark SQL types (:attr:`multimodal.task.Task.row_schema`)."""
    return [("vector", "array<float>")]  # float32, L2-normalised
