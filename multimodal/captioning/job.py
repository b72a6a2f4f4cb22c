"""``multimodal caption`` (or ``predict``) on a captioner: the caption of each input row's photo."""

from __future__ import annotations

import argparse
from typing import Any

from multimodal.batch_job import Job, finish_rows
from multimodal.errors import UserError
from multimodal.predict_args import GENERATION_OPTIONS


def generation_options(args: argparse.Namespace) -> dict[str, Any]:
    """The generation options the command line gives (unset ones keep the checkpoint's own)."""
    generation = {k: getattr(args, k) for k in GENERATION_OPTIONS if getattr(args, k, None) is not None}
    if args.top_k is not None:
        generation["top_k"] = args.top_k
    if args.do_sample:
        generation["do_sample"] = True
    if args.no_cache:
        generation["use_cache"] = False
    for name in ("trim_vocabulary", "rerank"):
        value = getattr(args, name)
        if value not in (None, "on", "off"):
            raise UserError(f"--{name} must be on or off, not '{value}'")
        if value is not None:
            generation[name] = value == "on"
    return generation


def caption_rows(job: Job) -> dict[str, Any] | None:
    """A captioner's job: one row with the caption of each input row's photo."""
    from multimodal.captioning.predictor import Captioner

    return captioner_job(job, Captioner(job.loaded))


def captioner_job(job: Job, api: Any) -> dict[str, Any] | None:
    """The caption job with ``api`` (a captioner's Python API, eager or torch-free) bound to the command's prompt,
    seed and generation options."""
    from multimodal.rows import RowsSink

    args = job.args
    generation = generation_options(args)
    captioner = api.with_options(args.prompt, args.seed, **generation)
    sink = RowsSink(args.out)
    dataset, _ = job.inputs(captioner)
    spec = job.spec(dataset, prompt=args.prompt, seed=args.seed, generation=generation, format=sink.out.suffix)

    def image(record: Any) -> dict[str, Any]:
        return {"image": record.image if isinstance(record.image, str) else None}

    return finish_rows(job.run(captioner, dataset, sink, spec, image), sink, job.source)


def row_schema(columns: Any, top_k: int = 1) -> list[tuple[str, str]]:
    """The prediction columns of one output row and their Spark SQL types (:attr:`multimodal.task.Task.row_schema`)."""
    return [("caption", "string"), ("score", "double")]
