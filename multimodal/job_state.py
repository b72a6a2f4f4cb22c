"""A batch job's identity and journal: fixed blocks over the input, the sink protocol, one job per output.

A job is identified by ``job.json`` in its sink's folder (checkpoint hash, input hash, options). An output path
that exists and is not this job's own output is refused and left untouched; a second job on the same output is
refused while the first holds its lock (:func:`output_lock`).
"""

from __future__ import annotations

import bisect
import json
import math
import os
from collections.abc import Iterator, Sequence
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
        """Number of blocks (the last one may be short)."""
        return math.ceil(self.n / self.size)

    def positions(self, block: int) -> range:
        """Input positions of one block."""
        return range(block * self.size, min(self.n, (block + 1) * self.size))


class BlockPositions(Sequence[int]):
    """The input positions of some blocks, in block order, computed when asked: a job over a million-row manifest
    does not hold a million Python ints (tens of MB) to say which rows a rank predicts."""

    def __init__(self, blocks: Blocks, chosen: list[int]) -> None:
        self.blocks, self.chosen = blocks, list(chosen)
        self.starts = [0]  # position in this sequence of each chosen block's first item
        for block in self.chosen:
            self.starts.append(self.starts[-1] + len(blocks.positions(block)))

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, index: int) -> int:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(f"position {index} out of range for {len(self)} items")
        index %= len(self)
        k = bisect.bisect_right(self.starts, index) - 1
        return self.blocks.positions(self.chosen[k])[index - self.starts[k]]


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as JSON to a temporary sibling, then rename it over ``path`` (a reader sees old or new)."""
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
    """Record the job as complete (its output is in place)."""
    _record(sink, spec, blocks, complete=True)


def _record(sink: Sink, spec: dict[str, Any], blocks: Blocks, complete: bool) -> None:
    state = {"spec": canonical(spec), "blocks": blocks.count, "block_size": blocks.size, "complete": complete}
    write_json_atomic(sink.folder / JOB_FILE, state)
