"""``multimodal predict`` on a word counter: one row (``id``, ``words``) per input row, written by the same
resumable rows sink as every task's."""

from __future__ import annotations

from typing import Any

from multimodal.batch_job import Job, finish_rows


def count_rows(job: Job) -> dict[str, Any] | None:
    """The task's batch job (:class:`multimodal.task.Task` ``job``): rows of predicted word counts."""
    from multimodal.writers import RowsSink
    from toy_task.predictor import WordCounts

    counter = WordCounts(job.loaded)
    sink = RowsSink(job.args.out)
    dataset, _ = job.inputs(counter)
    summary = job.run(counter, dataset, sink, job.spec(dataset, format=sink.out.suffix))
    return finish_rows(summary, sink, job.source)
