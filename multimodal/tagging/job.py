"""``multimodal predict`` on a tagger: one row of labels and scores per input row."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from multimodal.batch_job import finish_rows, job_inputs, job_spec
from multimodal.errors import UserError

if TYPE_CHECKING:
    from multimodal.writers import JobOptions


def tag_rows(
    args: argparse.Namespace,
    loaded: Any,
    source: Path,
    image_root: Path | None,
    options: JobOptions,
    relaunch: list[str],
) -> dict[str, Any] | None:
    """A tagger's job: one row of labels and scores per input row."""
    from multimodal.tagging.predictor import Tagger
    from multimodal.writers import RowsSink, run_job

    tagger = Tagger(loaded).with_top_k(args.top_k or 1)
    sink = RowsSink(args.out)
    if sink.out.suffix == ".csv" and tagger.top_k > 1:
        raise UserError("--top_k > 1 writes lists of [label, score]: use a .jsonl --out")
    dataset, _ = job_inputs(tagger, source, args, image_root)
    spec = job_spec(loaded, dataset, top_k=tagger.top_k, format=sink.out.suffix)
    summary = run_job(tagger.model, dataset, tagger.collate(), sink, spec, tagger.rows, options, relaunch)
    return finish_rows(summary, sink, source)
