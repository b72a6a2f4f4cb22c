"""``multimodal caption`` (or ``predict``) on a captioner: the caption of each input row's photo."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from multimodal.batch_job import finish_rows, job_inputs, job_spec
from multimodal.errors import UserError
from multimodal.predict_args import GENERATION_OPTIONS

if TYPE_CHECKING:
    from multimodal.writers import JobOptions


def caption_rows(
    args: argparse.Namespace,
    loaded: Any,
    source: Path,
    image_root: Path | None,
    options: JobOptions,
    relaunch: list[str],
) -> dict[str, Any] | None:
    """A captioner's job: one row with the caption of each input row's photo."""
    from multimodal.captioning.predictor import Captioner
    from multimodal.writers import RowsSink, run_job

    captioner = Captioner(loaded)
    generation = {k: getattr(args, k) for k in GENERATION_OPTIONS if getattr(args, k, None) is not None}
    if args.top_k is not None:
        generation["top_k"] = args.top_k
    if args.do_sample:
        generation["do_sample"] = True
    if args.no_cache:
        generation["use_cache"] = False
    if args.trim_vocabulary not in (None, "on", "off"):
        raise UserError(f"--trim_vocabulary must be on or off, not '{args.trim_vocabulary}'")
    if args.trim_vocabulary is not None:
        generation["trim_vocabulary"] = args.trim_vocabulary == "on"
    if args.rerank not in (None, "on", "off"):
        raise UserError(f"--rerank must be on or off, not '{args.rerank}'")
    if args.rerank is not None:
        generation["rerank"] = args.rerank == "on"
    captioner = captioner.with_options(args.prompt, args.seed, **generation)
    sink = RowsSink(args.out)
    dataset, _ = job_inputs(captioner, source, args, image_root)
    spec = job_spec(loaded, dataset, prompt=args.prompt, seed=args.seed, generation=generation, format=sink.out.suffix)

    def image(record: Any) -> dict[str, Any]:
        return {"image": record.image if isinstance(record.image, str) else None}

    model, collate = captioner.model, captioner.collate()
    summary = run_job(model, dataset, collate, sink, spec, captioner.rows, options, relaunch, image)
    return finish_rows(summary, sink, source)
