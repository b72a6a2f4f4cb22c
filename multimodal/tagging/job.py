"""``multimodal predict`` on a tagger: one row of labels and scores per input row."""

from __future__ import annotations

from typing import Any

from multimodal.batch_job import Job, finish_rows
from multimodal.errors import UserError


def tag_rows(job: Job) -> dict[str, Any] | None:
    """A tagger's job: one row of labels and scores per input row."""
    from multimodal.tagging.predictor import Tagger

    return tagger_job(job, Tagger(job.loaded))


def tagger_job(job: Job, api: Any) -> dict[str, Any] | None:
    """The tagging job with ``api`` (a tagger's Python API, eager or torch-free) bound to the command's top-k."""
    from multimodal.rows import RowsSink

    tagger = api.with_top_k(job.args.top_k or 1)
    sink = RowsSink(job.args.out)
    if sink.out.suffix == ".csv" and tagger.top_k > 1:
        raise UserError("--top_k > 1 writes lists of [label, score]: use a .jsonl --out")
    dataset, _ = job.inputs(tagger)
    summary = job.run(tagger, dataset, sink, job.spec(dataset, top_k=tagger.top_k, format=sink.out.suffix))
    return finish_rows(summary, sink, job.source)


def row_schema(columns: Any, top_k: int = 1) -> list[tuple[str, str]]:
    """The prediction columns of one output row and their Spark SQL types (:attr:`multimodal.task.Task.row_schema`)."""
    outputs = []
    for name in columns.attributes:
        outputs += [(name, "string"), (f"{name}_score", "double")]
        outputs += [(f"{name}_top", "array<struct<label:string,score:double>>")] if top_k > 1 else []
    for name in columns.tags:
        outputs += [(name, "array<string>"), (f"{name}_scores", "array<double>")]
    return outputs
