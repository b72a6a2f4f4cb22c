"""``multimodal predict`` on a word counter: one row (``id``, ``words``) per input row, written by the same
resumable rows sink as every task's."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from multimodal.batch_job import finish_rows, job_inputs, job_spec
from multimodal.writers import JobOptions


def count_rows(
    args: argparse.Namespace,
    loaded: Any,
    source: Path,
    image_root: Path | None,
    options: JobOptions,
    relaunch: list[str],
) -> dict[str, Any] | None:
    """The task's batch job (:class:`multimodal.task.Task` ``job``): rows of predicted word counts."""
    from multimodal.writers import RowsSink, run_job
    from toy_task.predictor import WordCounts

    counter = WordCounts(loaded)
    sink = RowsSink(args.out)
    dataset, _ = job_inputs(counter, source, args, image_root)
    spec = job_spec(loaded, dataset, format=sink.out.suffix)
    summary = run_job(counter.model, dataset, counter.collate(), sink, spec, counter.rows, options, relaunch)
    return finish_rows(summary, sink, source)
