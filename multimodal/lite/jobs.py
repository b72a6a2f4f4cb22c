"""``multimodal predict`` / ``export`` on an export folder without torch: the batch job of
:mod:`multimodal.predict_cli` with a plain loop in place of Lightning's ``trainer.predict``.

The loop keeps the contract of :func:`multimodal.writers.run_job`: the same fixed blocks, job record, output lock,
sinks and input order, so a job stopped part way (``--limit_batches``, a kill) resumes without duplicates, and
per-row errors are rows. Blocks run one after another in this process (ONNX Runtime uses the cores).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from multimodal.errors import UserError
from multimodal.job_state import Row, Sink


def run(args: argparse.Namespace, command: str, argv: list[str]) -> dict[str, Any] | None:
    """The batch command on an export folder: the job :func:`multimodal.predict_cli.build` describes, run by the
    task's torch-free job (``OnnxParts.lite``) with :func:`run_blocks`."""
    from multimodal.lite.loading import lite_module
    from multimodal.predict_cli import build

    if args.engine != "lightning":
        from multimodal.lite import FULL_INSTALL

        raise UserError(f"--engine {args.engine} needs the full install ({FULL_INSTALL})")
    _, job = build(args, command, argv, run_blocks)
    return lite_module(args.ckpt_path, job.loaded.task).JOB(job)


def run_blocks(
    job: Any,
    predictor: Any,
    dataset: Any,
    sink: Sink,
    spec: dict[str, Any],
    record_fields: Callable[[Any], Row] | None = None,
) -> dict[str, Any]:
    """Predict every unfinished block of ``dataset`` and finalize the output (the summary of
    :func:`multimodal.writers.run_job`: ``resumed_blocks`` and ``complete``, or the missing blocks)."""
    from multimodal.job_state import open_job, output_lock
    from multimodal.writers import job_blocks

    blocks, spec = job_blocks(dataset, spec, job.options)
    with output_lock(sink.output):
        if open_job(sink, spec, blocks):
            return {"out": sink.describe(), "already_complete": True}
        todo = [b for b in range(blocks.count) if not sink.block_done(b)]
        budget = job.options.limit_batches  # batches this run may predict (tests of resuming), as Lightning counts
        bar = progress_bar(sum(len(blocks.positions(b)) for b in todo), job.options.progress, sink.output)
        for block in todo:
            positions = blocks.positions(block)
            batches = -(-len(positions) // predictor.batch_size)
            if budget is not None and budget < batches:
                break  # a block is written whole or not at all
            sink.write_block(block, block_rows(predictor, dataset, positions, record_fields))
            bar.update(len(positions))
            budget = None if budget is None else budget - batches
        bar.close()
        missing = [b for b in range(blocks.count) if not sink.block_done(b)]
        if missing:
            sink.incomplete(blocks, spec, missing)
            return {"out": sink.describe(), "complete": False, "missing_blocks": missing}
        return {**sink.finalize(blocks, spec), "complete": True, "resumed_blocks": blocks.count - len(todo)}


def progress_bar(rows: int, shown: bool, output: Any) -> Any:
    """The progress of the rows this run predicts into ``output``, on stderr (hidden by ``--no_progress``): tqdm's
    bar on a terminal, log lines with an ETA elsewhere (:mod:`multimodal.progress`)."""
    from pathlib import Path

    from multimodal.progress import progress

    return progress(rows, Path(str(output)).name, unit="row", shown=shown)


def block_rows(predictor: Any, dataset: Any, positions: range, record_fields: Callable[[Any], Row] | None) -> list[Row]:
    """The rows of one block in input order, as the Lightning engine's writer hands them to the sink."""
    from multimodal.rows import block_rows as ordered
    from multimodal.rows import positioned_rows

    rows: list[tuple[int, Row]] = []
    for batch in predictor.batches(dataset, positions):
        skipped = batch.pop("skipped", [])
        prediction = predictor.model.predict_step(batch) if batch["ids"] else {"ids": []}
        rows += positioned_rows(prediction, batch["positions"], skipped, predictor.rows, batch.get("skipped_photos"))
    return ordered(rows, dataset.records, record_fields)
