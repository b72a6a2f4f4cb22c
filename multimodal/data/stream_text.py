"""Streaming CSV and JSONL manifests: rows read in order from any byte offset, with a sparse offset index.

The index holds the byte offset and line number of every :data:`INDEX_EVERY`-th row, built by one pass with a real
CSV reader (quoted fields may hold newlines, so lines are not rows), so a reader can start at row ``n`` after decoding
at most ``INDEX_EVERY - 1`` rows instead of all ``n``.
"""

from __future__ import annotations

import csv
import json
from array import array
from collections.abc import Iterator
from typing import Any

from multimodal.errors import UserError

INDEX_EVERY = 1024
_BLOCK = 1 << 20
Record = tuple[int, int, Any]  # (line number of the row's first line, byte offset of that line, fields or object)


def raw_lines(f: Any, offset: int) -> Iterator[bytes]:
    """The lines of the binary file ``f`` from byte ``offset`` on, each with its ``\\n`` (the last may lack it).

    Read in blocks rather than by ``readline`` so that every fsspec file (local, memory, s3, http) is equally fast.
    """
    f.seek(offset)
    rest = b""
    while block := f.read(_BLOCK):
        lines = (rest + block).split(b"\n")
        rest = lines.pop()
        for line in lines:
            yield line + b"\n"
    if rest:
        yield rest


def nested_dict(value: Any) -> bool:
    """Whether a cell is a dict or a list holding one (cells are text, numbers or lists of them)."""
    return isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, dict) for v in value))


class TextSource:
    """One CSV or JSONL manifest read row by row.

    CSV cells are text exactly as ``pandas.read_csv(dtype=str, keep_default_na=False)`` reads them (a row shorter than
    the header gets None in its missing cells); JSONL rows are JSON objects whose columns are the union of their keys
    in order of first appearance, as ``pandas.DataFrame(records)`` makes them. JSONL is indexed when opened (its
    columns need every row); CSV when the row count or a start row is first asked for.

    Args:
        fs: the fsspec file system holding the file.
        path: the file's path in ``fs``.
        name: the file as errors name it.
        kind: ``"csv"`` or ``"jsonl"``.
    """

    def __init__(self, fs: Any, path: str, name: str, kind: str) -> None:
        self.fs, self.path, self.name, self.kind = fs, path, name, kind
        self._offsets = array("q")
        self._lines = array("q")
        self._count: int | None = None
        self._start = (0, 1)  # byte offset and line number of the first row
        self.columns: list[str] = []
        if kind == "csv":
            self.columns = self._read_header()
        else:
            self._build_index()

    @property
    def num_rows(self) -> int:
        """The number of rows (the first call on a CSV file reads it once, building the index)."""
        if self._count is None:
            self._build_index()
        return self._count  # type: ignore[return-value]

    @property
    def counted_rows(self) -> int | None:
        """The row count if a pass has read it already, else None (asking never reads the file)."""
        return self._count

    def batches(self, start: int, columns: list[str], batch_rows: int) -> Iterator[tuple[str, dict[str, list]]]:
        """Column lists of about ``batch_rows`` rows each, the first beginning at row ``start``."""
        offset, line, skip = *self._start, 0
        if start > 0:
            if start >= self.num_rows:
                return
            block = start // INDEX_EVERY
            offset, line, skip = self._offsets[block], self._lines[block], start - block * INDEX_EVERY
        wanted = [self.columns.index(c) for c in columns] if self.kind == "csv" else columns
        out: dict[str, list] = {c: [] for c in columns}
        size = 0
        for n, (_, _, value) in enumerate(self._records(offset, line)):
            if n < skip:
                continue
            if self.kind == "csv":
                for column, i in zip(columns, wanted, strict=True):
                    out[column].append(value[i] if i < len(value) else None)
            else:
                for column in columns:
                    out[column].append(value.get(column))
            size += 1
            if size == batch_rows:
                yield self.name, out
                out, size = {c: [] for c in columns}, 0
        if size:
            yield self.name, out

    def _records(self, offset: int, line: int) -> Iterator[Record]:
        try:
            with self.fs.open(self.path, "rb") as f:
                yield from (self._csv_records if self.kind == "csv" else self._json_records)(f, offset, line)
        except UserError:
            raise
        except (OSError, ValueError) as err:  # storage failures (a lost connection, a server without ranges)
            raise UserError(f"manifest {self.name} could not be read: {err}") from err

    def _json_records(self, f: Any, offset: int, line: int) -> Iterator[Record]:
        for n, raw in enumerate(raw_lines(f, offset), start=line):
            text = self._decode(raw, n)
            if text.strip():
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as err:
                    raise UserError(f"manifest {self.name} line {n}: invalid JSON ({err})") from None
                if not isinstance(record, dict):
                    kind = type(record).__name__
                    raise UserError(f"manifest {self.name} line {n}: expected a JSON object, got {kind}")
                yield n, offset, record
            offset += len(raw)

    def _csv_records(self, f: Any, offset: int, line: int) -> Iterator[Record]:
        at = [offset, line]  # byte offset and line number after the lines the CSV reader has taken so far

        def lines() -> Iterator[str]:
            for raw in raw_lines(f, offset):
                at[0] += len(raw)
                at[1] += 1
                yield self._decode(raw, at[1] - 1)

        # The reader pulls lines only as the current row needs them, so ``at`` is where the next row begins.
        reader = csv.reader(lines())
        begin, first = offset, line
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                raise UserError(f"manifest {self.name} line {first}: invalid CSV ({err})") from None
            if len(fields) > len(self.columns) and self.columns:
                has = len(self.columns)
                raise UserError(f"manifest {self.name} line {first}: {len(fields)} fields, the header has {has}")
            if fields:  # pandas skips blank lines too
                yield first, begin, fields
            begin, first = at[0], at[1]

    def _decode(self, raw: bytes, line: int) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise UserError(f"manifest {self.name} line {line}: not UTF-8 text ({err.reason})") from None

    def _read_header(self) -> list[str]:
        """The CSV header; also checks that one row follows it (the empty-file check is cheap this way)."""
        records = self._records(0, 1)
        first = next(records, None)
        if first is None:
            raise UserError(f"manifest {self.name} is empty")
        header = [c.lstrip("\ufeff") if i == 0 else c for i, c in enumerate(first[2])]
        if len(set(header)) < len(header):
            twice = sorted({c for c in header if header.count(c) > 1})
            raise UserError(f"manifest {self.name}: the header names column(s) {twice} more than once")
        self.columns = header
        row = next(records, None)
        records.close()
        if row is None:
            raise UserError(f"manifest {self.name} is empty")
        self._start = (row[1], row[0])
        return header

    def _build_index(self) -> None:
        """One pass: the offset of every ``INDEX_EVERY``-th row, the row count and (JSONL) the columns."""
        offsets, lines, count = array("q"), array("q"), 0
        seen: dict[str, None] = {}
        for line, offset, value in self._records(*self._start):
            if count % INDEX_EVERY == 0:
                offsets.append(offset)
                lines.append(line)
            if self.kind == "jsonl":
                for column, cell in value.items():
                    if nested_dict(cell):
                        where = f"manifest {self.name} line {line} (row {count}), column '{column}'"
                        raise UserError(f"{where}: a dict cell ({str(cell)[:40]}); cells hold text, numbers or lists")
                    seen.setdefault(column)
            count += 1
        if self.kind == "jsonl":
            if count == 0:
                raise UserError(f"manifest {self.name} is empty")
            self.columns = list(seen)
        self._offsets, self._lines, self._count = offsets, lines, count
