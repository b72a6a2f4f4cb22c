"""The one batch-prediction path: ``trainer.predict`` over fixed blocks of the input and one writer.

Tagging predict, embedding export and caption generation all run here. The input (product records in input order)
is cut into blocks of ``block_size`` items (whole batches). Each rank predicts the unfinished blocks assigned to it,
round robin; :class:`BlockWriter` buffers one block and hands it, sorted by input position, to a *sink* that writes
it atomically (temporary sibling, then rename). A killed run loses at most the blocks in flight: the re-run skips
finished blocks, so every id is written exactly once. When every block is done, rank 0 has the sink finalize the
output (rows joined into one JSONL / CSV file and renamed into place; an export's products table and manifest).

A job's identity, journal and lock are in :mod:`multimodal.job_state`; rows and their JSONL / CSV file in
:mod:`multimodal.rows`. Both are re-exported here, the batch jobs' one import path.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from multimodal.errors import UserError
from multimodal.job_state import (  # noqa: F401 - re-exported: the batch jobs' one import path
    JOB_FILE,
    BlockPositions,
    Blocks,
    Row,
    Sink,
    canonical,
    close_job,
    open_job,
    output_lock,
    write_json_atomic,
)
from multimodal.rows import RowsSink, block_rows, positioned_rows  # noqa: F401 - re-exported, as above


def job_data(dataset: Any, collate: Any, batch_size: int, num_workers: int, todo: list[int], blocks: Blocks) -> Any:
    """A LightningDataModule serving, on each rank, its share of the unfinished blocks (round robin), in order.

    Use with ``Trainer(use_distributed_sampler=False)``: the split across ranks is done here, by whole blocks, so
    every item is predicted by exactly one rank.
    """
    import lightning as L
    from torch.utils.data import DataLoader, Subset

    class JobData(L.LightningDataModule):
        def __init__(self) -> None:
            super().__init__()
            self.blocks, self.batch_size, self.my_blocks = blocks, batch_size, list[int]()

        def predict_dataloader(self) -> DataLoader:
            rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
            self.my_blocks = todo[rank::world]
            return DataLoader(
                Subset(dataset, BlockPositions(blocks, self.my_blocks)),
                batch_size=batch_size,
                shuffle=False,
                num_workers=num_workers,
                collate_fn=collate,
            )

    return JobData()


def block_writer(
    sink: Sink,
    data: Any,
    to_rows: Callable[[dict[str, Any]], list[Row]],
    records: list[Any],
    record_fields: Callable[[Any], Row] | None = None,
) -> Any:
    """A ``BasePredictionWriter`` that turns each batch's prediction into rows (``to_rows``: one per predicted id,
    in order), adds an error row per unreadable item, and writes each block through ``sink`` once complete.

    ``record_fields(record)`` adds fields of the input to every row (e.g. the image path), after the id.
    """
    from lightning.pytorch.callbacks import BasePredictionWriter

    class BlockWriter(BasePredictionWriter):
        def __init__(self) -> None:
            super().__init__(write_interval="batch")
            self.rows: list[tuple[int, Row]] = []
            self.seen = 0
            self.written: list[int] = []

        def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):  # noqa: ANN001
            per_block = data.blocks.size // data.batch_size
            block = data.my_blocks[batch_idx // per_block]
            skipped = batch.get("skipped", [])
            self.rows += positioned_rows(prediction, batch["positions"], skipped, to_rows, batch.get("skipped_photos"))
            self.seen += 1
            if self.seen == math.ceil(len(data.blocks.positions(block)) / data.batch_size):
                self.flush(block)

        def flush(self, block: int) -> None:
            sink.write_block(block, block_rows(self.rows, records, record_fields))
            self.written.append(block)
            self.rows, self.seen = [], 0

    return BlockWriter()


@dataclass
class JobOptions:
    """How a batch job runs (the command line's common options)."""

    batch_size: int = 32
    block_size: int = 1024
    num_workers: int = 0
    accelerator: str = "auto"
    devices: int | str = 1
    strategy: str = "auto"
    precision: str | None = None
    progress: bool = True
    limit_batches: int | None = None  # stop after this many batches per rank (tests of resuming)


def job_blocks(dataset: Any, spec: dict[str, Any], options: JobOptions) -> tuple[Blocks, dict[str, Any]]:
    """The fixed blocks of a job over ``dataset`` (whole batches each) and its spec with their size: every engine
    cuts the input alike, so a job begun on one resumes on another."""
    if options.batch_size <= 0:
        raise UserError(f"--batch_size must be positive, not {options.batch_size}")
    if options.block_size <= 0:
        raise UserError(f"--block_size must be positive, not {options.block_size}")
    if len(dataset) == 0:
        raise UserError("no products to predict")
    size = math.ceil(options.block_size / options.batch_size) * options.batch_size
    return Blocks(len(dataset), size), {**spec, "block_size": size, "items": len(dataset)}


def run_job(
    model: Any,
    dataset: Any,
    collate: Any,
    sink: Sink,
    spec: dict[str, Any],
    to_rows: Callable[[dict[str, Any]], list[Row]],
    options: JobOptions,
    relaunch: list[str] | None = None,
    record_fields: Callable[[Any], Row] | None = None,
) -> dict[str, Any] | None:
    """Predict every unfinished block of ``dataset`` with ``model`` and finalize the output on rank 0.

    Args:
        relaunch: the command line (after the program name) that Lightning's DDP launcher re-runs in the other
            processes.
    Returns:
        The sink's summary on rank 0 (with ``resumed`` blocks and ``complete``), None on the other ranks.
    """
    blocks, spec = job_blocks(dataset, spec, options)
    with output_lock(sink.output):
        return _run_locked(model, dataset, collate, sink, spec, blocks, to_rows, options, relaunch, record_fields)


def _run_locked(
    model: Any,
    dataset: Any,
    collate: Any,
    sink: Sink,
    spec: dict[str, Any],
    blocks: Blocks,
    to_rows: Callable[[dict[str, Any]], list[Row]],
    options: JobOptions,
    relaunch: list[str] | None,
    record_fields: Callable[[Any], Row] | None,
) -> dict[str, Any] | None:
    import lightning as L

    from multimodal.progress_bar import log_progress_callbacks

    if open_job(sink, spec, blocks):
        return {"out": sink.describe(), "already_complete": True}
    todo = [b for b in range(blocks.count) if not sink.block_done(b)]
    resumed = blocks.count - len(todo)
    if todo:
        data = job_data(dataset, collate, options.batch_size, options.num_workers, todo, blocks)
        writer = block_writer(sink, data, to_rows, dataset.records, record_fields)
        trainer = L.Trainer(
            accelerator=options.accelerator,
            devices=options.devices,
            strategy=options.strategy,
            precision=options.precision,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            use_distributed_sampler=False,
            enable_progress_bar=options.progress,
            callbacks=[writer, *log_progress_callbacks(options.progress, [writer])],
            limit_predict_batches=options.limit_batches,
        )
        if (trainer.num_devices > 1 or trainer.num_nodes > 1) and relaunch is not None:
            sys.argv = [sys.argv[0], *relaunch]  # Lightning re-runs sys.argv in the other processes
        trainer.predict(model, datamodule=data, return_predictions=False)
        trainer.strategy.barrier()
        if not trainer.is_global_zero:
            return None
    missing = [b for b in range(blocks.count) if not sink.block_done(b)]
    if missing:  # stopped early (--limit_batches): a re-run finishes the job
        sink.incomplete(blocks, spec, missing)
        return {"out": sink.describe(), "complete": False, "missing_blocks": missing}
    return {**sink.finalize(blocks, spec), "complete": True, "resumed_blocks": resumed}
