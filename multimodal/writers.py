"""The one batch-prediction path: ``trainer.predict`` over fixed blocks of the input and one writer.

Tagging predict, embedding export and caption generation all run here. The input (product records in input order)
is cut into blocks of ``block_size`` items (whole batches). Each rank predicts the unfinished blocks assigned to it,
round robin; :class:`BlockWriter` buffers one block and hands it, sorted by input position, to a *sink* that writes
it atomically (temporary sibling, then rename). A killed run loses at most the blocks in flight: the re-run skips
finished blocks, so every id is written exactly once. When every block is done, rank 0 has the sink finalize the
output (rows joined into one JSONL / CSV file and renamed into place; an export's products table and manifest).

A job is identified by ``job.json`` in the sink's folder (checkpoint hash, input hash, options). An output path
that exists and is not this job's own output is refused and left untouched.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from multimodal.errors import UserError

JOB_FILE = "job.json"
Row = dict[str, Any]


@dataclass
class Blocks:
    """Fixed blocks of ``size`` items over ``n`` items in input order."""

    n: int
    size: int

    @property
    def count(self) -> int:
        return math.ceil(self.n / self.size)

    def positions(self, block: int) -> range:
        return range(block * self.size, min(self.n, (block + 1) * self.size))


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def canonical(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` as it reads back from JSON (tuples become lists), so stored and new specs compare equal."""
    return json.loads(json.dumps(spec))


class Sink(Protocol):
    """Where a job's blocks go and how they become the output."""

    folder: Path  # holds job.json and the finished blocks
    output: Path  # the file or folder the job writes (locked while it runs)

    def describe(self) -> str: ...  # the output, as named in messages

    def occupied(self) -> bool: ...  # the output path holds something (checked before a job is recorded there)

    def exists(self) -> bool: ...  # the finished output is in place

    def block_done(self, block: int) -> bool: ...

    def write_block(self, block: int, rows: list[Row]) -> None: ...

    def finalize(self, blocks: Blocks, spec: dict[str, Any]) -> dict[str, Any]: ...

    def incomplete(self, blocks: Blocks, spec: dict[str, Any], missing: list[int]) -> None: ...  # stopped early


# --------------------------------------------------------------------------------------------------- job state
@contextmanager
def output_lock(output: Path) -> Iterator[None]:
    """One job per output at a time: an exclusive OS lock on the hidden sibling ``.<name>.lock`` (released by the
    OS when the holder dies, so a kill -9 never leaves a stale lock). A second job gets a one-line error naming
    the holder's PID. Under DDP only the launching process (local rank 0) takes it."""
    import fcntl

    if os.environ.get("LOCAL_RANK", "0") != "0":
        yield
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    path = output.with_name(f".{output.name}.lock")
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            raise UserError(
                f"{output} is being written by another job (pid {holder}): wait for it or use another --out"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def open_job(sink: Sink, spec: dict[str, Any], blocks: Blocks) -> bool:
    """Check the output is this job's and record the job; True when its output is already complete."""
    spec = canonical(spec)
    path = sink.folder / JOB_FILE
    if path.is_file():
        try:
            state = json.loads(path.read_text())
        except ValueError as err:
            raise UserError(f"{path} is corrupt ({err}): remove {sink.describe()} or use another --out") from None
        if state.get("spec") != spec:
            raise UserError(
                f"{sink.describe()} holds the output of another model, input or options (differs in "
                f"{_differences(state.get('spec') or {}, spec)}): use another --out, or re-run it as it was begun"
            )
        return bool(state.get("complete")) and sink.exists()  # complete, but output removed by hand: run again
    if sink.occupied():
        raise UserError(
            f"{sink.describe()} exists and is not the output of this job: it is left untouched; use another --out"
        )
    sink.folder.mkdir(parents=True, exist_ok=True)
    _record(sink, spec, blocks, complete=False)
    return False


def _differences(stored: dict[str, Any], new: dict[str, Any]) -> str:
    """The keys that differ, each with its two values when they are short (an option the user can give again,
    such as an export's columns, changed by a new default)."""
    parts = []
    for key in sorted(k for k in {*stored, *new} if stored.get(k) != new.get(k)):
        was, now = json.dumps(stored.get(key), ensure_ascii=False), json.dumps(new.get(key), ensure_ascii=False)
        short = len(was) + len(now) <= 160 and not key.endswith("sha256")
        parts.append(f"{key}: {was} there, {now} now" if short else key)
    return "; ".join(parts)


def close_job(sink: Sink, spec: dict[str, Any], blocks: Blocks) -> None:
    _record(sink, spec, blocks, complete=True)


def _record(sink: Sink, spec: dict[str, Any], blocks: Blocks, complete: bool) -> None:
    state = {"spec": canonical(spec), "blocks": blocks.count, "block_size": blocks.size, "complete": complete}
    write_json_atomic(sink.folder / JOB_FILE, state)


# -------------------------------------------------------------------------------------------------- rows sink
class RowsSink:
    """One JSONL or CSV file of rows (``id`` first). Blocks are JSONL files in the hidden sibling folder
    ``.<name>.job/``; finalize joins them into a temporary sibling of ``out`` and renames it into place."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        if self.out.is_dir():
            raise UserError(f"--out {self.out} is a folder; give a .jsonl or .csv file")
        if self.out.suffix not in (".jsonl", ".csv"):
            raise UserError(f"--out must end in .jsonl or .csv, not '{self.out.name}'")
        self.folder = self.out.parent / f".{self.out.name}.job"
        self.output = self.out
        self.first_error: str | None = None  # of the finished output (named when every row failed)

    def describe(self) -> str:
        return str(self.out)

    def occupied(self) -> bool:
        return self.out.exists()

    def exists(self) -> bool:
        return self.out.is_file()

    def _block(self, block: int) -> Path:
        return self.folder / f"block-{block:06d}.jsonl"

    def block_done(self, block: int) -> bool:
        return self._block(block).is_file()

    def write_block(self, block: int, rows: list[Row]) -> None:
        path = self._block(block)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def rows(self, blocks: Blocks) -> Any:
        for block in range(blocks.count):
            with open(self._block(block), encoding="utf-8") as f:
                for line in f:
                    yield json.loads(line)

    def finalize(self, blocks: Blocks, spec: dict[str, Any]) -> dict[str, Any]:
        missing = [b for b in range(blocks.count) if not self.block_done(b)]
        if missing:
            raise UserError(f"{self.out}: blocks {missing[:10]} were not written; re-run the same command to finish")
        tmp = self.out.with_name(f".{self.out.name}.{os.getpid()}.tmp")
        counts = {"rows": 0, "errors": 0}
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            if self.out.suffix == ".jsonl":
                for row in self.rows(blocks):
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                    self._count(counts, row)
            else:
                fields = list(dict.fromkeys(k for row in self.rows(blocks) for k in row))
                writer = csv.DictWriter(f, fieldnames=fields)
                writer.writeheader()
                for row in self.rows(blocks):
                    writer.writerow({k: _cell(v) for k, v in row.items()})
                    self._count(counts, row)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.out)
        close_job(self, spec, blocks)
        for block in range(blocks.count):
            self._block(block).unlink(missing_ok=True)
        return {"out": str(self.out), **counts}

    def incomplete(self, blocks: Blocks, spec: dict[str, Any], missing: list[int]) -> None:
        pass  # the blocks written so far stay in the job folder until a re-run completes the output

    def _count(self, counts: dict[str, int], row: Row) -> None:
        counts["rows"] += 1
        if "error" in row:
            counts["errors"] += 1
            self.first_error = self.first_error or f"row {counts['rows'] - 1} (id {row['id']}): {row['error']}"


def _cell(value: Any) -> Any:
    if isinstance(value, list):
        return "|".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    return value


# ------------------------------------------------------------------------------------------------- data + writer
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
            positions = [p for b in self.my_blocks for p in blocks.positions(b)]
            return DataLoader(
                Subset(dataset, positions),
                batch_size=batch_size,
                shuffle=False,
                num_workers=num_workers,
                collate_fn=collate,
            )

    return JobData()


def positioned_rows(
    prediction: dict[str, Any], positions: list[int], skipped: list[dict[str, Any]], to_rows: Callable[..., list[Row]]
) -> list[tuple[int, Row]]:
    """``(input position, row)`` of one batch: a row per predicted id (``to_rows``), an error row per item that
    could not be read. The batch jobs and the Python API both build their rows here."""
    rows = to_rows(prediction) if prediction["ids"] else []
    out = list(zip(positions, rows, strict=True))
    return out + [(s["position"], {"id": s["id"], "error": s["reason"]}) for s in skipped]


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
            self.rows += positioned_rows(prediction, batch["positions"], batch.get("skipped", []), to_rows)
            self.seen += 1
            if self.seen == math.ceil(len(data.blocks.positions(block)) / data.batch_size):
                self.flush(block)

        def flush(self, block: int) -> None:
            out = []
            for position, row in sorted(self.rows, key=lambda pr: pr[0]):
                extra = record_fields(records[position]) if record_fields is not None else {}
                out.append({"id": row["id"], **extra, **row})
            sink.write_block(block, out)
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
    if options.batch_size <= 0:
        raise UserError(f"--batch_size must be positive, not {options.batch_size}")
    if options.block_size <= 0:
        raise UserError(f"--block_size must be positive, not {options.block_size}")
    if len(dataset) == 0:
        raise UserError("no products to predict")
    size = math.ceil(options.block_size / options.batch_size) * options.batch_size
    blocks = Blocks(len(dataset), size)
    spec = {**spec, "block_size": size, "items": len(dataset)}
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
            callbacks=[writer],
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
