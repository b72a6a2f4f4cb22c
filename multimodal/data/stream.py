"""Catalogues larger than memory: a manifest opened without reading its rows, read in chunks or row by row.

A :class:`ManifestTable` is a ``.csv``, ``.jsonl`` / ``.json`` or ``.parquet`` file, or a folder (or URL prefix)
holding a Parquet dataset, on any file system fsspec reaches (local paths, ``memory://``, ``s3://``, ``gs://``,
``https://``). It reads rows in order with constant memory, from any start row, without torch::

    table = ManifestTable("examples/fashion-products/metadata.csv", required=["id", "title"])
    for first, frame in table.chunks(start=0, rows=8192, columns=["id", "title"]):
        ...

Cells are plain Python values (text, numbers, None, lists): a Parquet ``list<string>`` or a JSON array stays a list,
a dict or struct cell is a one-line error naming the file, row and column.
"""

from __future__ import annotations

import posixpath
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import fsspec
import pandas as pd

from multimodal.data.stream_ids import IdScan, scan_ids
from multimodal.data.stream_parquet import ParquetSource
from multimodal.data.stream_text import TextSource
from multimodal.errors import UserError

__all__ = ["IdScan", "LazyRows", "ManifestTable", "scan_ids"]
_TEXT_KINDS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}


def _display(fs: Any, path: str) -> str:
    """A path as errors name it: as given for local files, with its protocol for any other file system."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    return path if "file" in protocols else fs.unstrip_protocol(path)


def _dataset_files(fs: Any, root: str) -> list[str]:
    """The ``.parquet`` files under ``root`` in sorted path order, leaving out hidden and ``_``-prefixed entries
    (``_SUCCESS``, ``_metadata``, ``.crc`` files written beside a dataset)."""
    found = []
    for path in fs.find(root):
        relative = path[len(root.rstrip("/")) :].strip("/").split("/")
        if path.endswith(".parquet") and not any(p.startswith(("_", ".")) for p in relative):
            found.append(path)
    return sorted(found)


def open_source(path: str) -> ParquetSource | TextSource:
    """The reader of the manifest at ``path`` (a file or a Parquet dataset folder), having read only its footers or
    header (and, for JSONL, its one indexing pass)."""
    try:
        fs, root = fsspec.core.url_to_fs(path)
        suffix = posixpath.splitext(root.rstrip("/"))[1].lower()
        # A name with a manifest suffix is asked about as a file first: over HTTP, asking whether a URL is a folder
        # fetches and parses the page. (Spark names dataset folders ``*.parquet``: those are folders then.)
        is_file = suffix in (".parquet", *_TEXT_KINDS) and fs.isfile(root)
        is_dir = not is_file and fs.isdir(root)
        is_file = is_file or (not is_dir and fs.isfile(root))
    except (OSError, ValueError, ImportError) as err:
        raise UserError(f"manifest {path} could not be opened: {err}") from err
    if is_dir:
        files = _dataset_files(fs, root)
        if not files:
            raise UserError(f"manifest {path} is a folder without .parquet files")
        return ParquetSource(fs, files, [_display(fs, f) for f in files])
    if not is_file:
        raise UserError(f"manifest not found: {path}")
    name = _display(fs, root)
    if suffix == ".parquet":
        return ParquetSource(fs, [root], [name])
    if suffix in _TEXT_KINDS:
        return TextSource(fs, root, name, _TEXT_KINDS[suffix])
    raise UserError(f"manifest {name}: unknown format '{suffix}' (use .csv, .jsonl, .parquet or a Parquet folder)")


def check_chunking(start: int, rows: int) -> None:
    """Chunks of ``rows`` rows from row ``start``: a programming error when either is out of range."""
    if rows < 1 or start < 0:
        raise ValueError(f"chunks need rows >= 1 and start >= 0 (got rows={rows}, start={start})")


class ManifestTable:
    """A manifest opened without reading its rows.

    Args:
        path: a ``.csv``, ``.jsonl`` / ``.json`` or ``.parquet`` file, or a folder / URL prefix holding a Parquet
            dataset (several ``.parquet`` files, read in sorted path order); a local path or any fsspec URL.
        required: columns that must be present.

    Attributes:
        columns: the column names, in the file's order.
        num_rows: the row count (Parquet: from the footers; CSV: counted by the first pass that builds the offset
            index, run when first needed; JSONL: counted when opened).

    Raises:
        UserError: not found, unknown format, unreadable, empty, or a missing column (named, with those present).
    """

    def __init__(self, path: str, required: Sequence[str] = ()) -> None:
        self.path = str(path)
        self._source = open_source(self.path)
        self.columns: list[str] = list(self._source.columns)
        if isinstance(self._source, ParquetSource) and self._source.num_rows == 0:
            raise UserError(f"manifest {self.path} is empty")
        missing = [c for c in dict.fromkeys(required) if c not in self.columns]
        if missing:
            raise UserError(f"manifest {self.path} is missing column(s) {missing}; columns present: {self.columns}")

    @property
    def num_rows(self) -> int:
        return self._source.num_rows

    @property
    def counted_rows(self) -> int | None:
        """The row count when known without reading the file (Parquet, JSONL, an indexed CSV), else None."""
        return self._source.counted_rows

    def __len__(self) -> int:
        return self.num_rows

    def plain_columns(self) -> set[str]:
        """The columns whose every cell is text, a number, a boolean or null, known without reading a row (every
        column of a CSV file; the Parquet columns of such types; none of a JSONL file): no cell of them needs
        checking before it is made text."""
        if isinstance(self._source, TextSource):
            return set(self.columns) if self._source.kind == "csv" else set()
        parts = self._source.parts  # every file: a column all null in one file may hold lists in another
        return {c for c in self.columns if all(_plain(p.schema.field(c).type) for p in parts)}

    def __repr__(self) -> str:
        return f"ManifestTable({self.path!r}, columns={self.columns})"

    def column_chunks(
        self, start: int = 0, rows: int = 8192, columns: Sequence[str] | None = None
    ) -> Iterator[tuple[int, dict[str, list]]]:
        """Like :meth:`chunks`, each chunk as a dict of column lists (no DataFrame built)."""
        check_chunking(start, rows)
        names = self._select(columns)
        pending: list[dict[str, list]] = []
        size, first = 0, start
        for _, batch in self._source.batches(start, names, rows):
            pending.append(batch)
            size += len(batch[names[0]]) if names else 0
            while size >= rows:
                chunk, pending = _split(pending, names, rows)
                yield first, chunk
                first, size = first + rows, size - rows
        if size:
            yield first, _split(pending, names, size)[0]

    def chunks(
        self, start: int = 0, rows: int = 8192, columns: Sequence[str] | None = None
    ) -> Iterator[tuple[int, pd.DataFrame]]:
        """The rows from ``start`` on, in order, ``rows`` at a time (the last chunk may be shorter), in constant
        memory. Rows before ``start`` are not decoded: Parquet skips whole row groups by their counts, CSV / JSONL
        seek to a byte offset from the index.

        Yields:
            (the chunk's first row number, a DataFrame of object columns indexed by row number).
        """
        for first, chunk in self.column_chunks(start, rows, columns):
            yield first, _frame(chunk, first)

    def rows(self, start: int, stop: int, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """Rows ``start`` to ``stop`` (excluded; fewer past the end) as one DataFrame indexed by row number."""
        if stop <= start:
            return _frame({c: [] for c in self._select(columns)}, start)
        for first, chunk in self.column_chunks(start, stop - start, columns):
            return _frame(chunk, first)
        return _frame({c: [] for c in self._select(columns)}, start)

    def _select(self, columns: Sequence[str] | None) -> list[str]:
        if columns is None:
            return list(self.columns)
        if not columns:
            raise ValueError("columns must name at least one column (None reads them all)")
        unknown = [c for c in columns if c not in self.columns]
        if unknown:
            raise UserError(f"manifest {self.path} has no column(s) {unknown}; columns present: {self.columns}")
        return list(dict.fromkeys(columns))


def _plain(kind: Any) -> bool:
    import pyarrow as pa

    checks = (pa.types.is_string, pa.types.is_large_string, pa.types.is_integer, pa.types.is_floating)
    return any(check(kind) for check in (*checks, pa.types.is_boolean, pa.types.is_null))


def _split(pending: list[dict[str, list]], names: list[str], rows: int) -> tuple[dict[str, list], list[dict]]:
    """The first ``rows`` rows of the pending batches, and what is left of them."""
    chunk: dict[str, list] = {c: [] for c in names}
    rest: list[dict[str, list]] = []
    for batch in pending:
        need = rows - len(chunk[names[0]])
        if need <= 0:
            rest.append(batch)
            continue
        for c in names:
            chunk[c].extend(batch[c][:need])
        if len(batch[names[0]]) > need:
            rest.append({c: batch[c][need:] for c in names})
    return chunk, rest


def _frame(chunk: dict[str, list], first: int) -> pd.DataFrame:
    length = len(next(iter(chunk.values()))) if chunk else 0
    return pd.DataFrame(chunk, index=pd.RangeIndex(first, first + length), dtype=object)


class LazyRows(Sequence):
    """Row ``i`` of a table as a record, decoding only the chunk that holds it (the last two chunks are kept).

    A map-style torch Dataset can hold this for a million-row manifest: it pickles with the table's footer summary or
    offset index and no rows, and reopens the files in a DataLoader worker.

    Args:
        table: the manifest.
        to_record: ``(row number, {column: cell}) -> record``; a module-level function so that it pickles.
        chunk_rows: rows decoded together (chunk ``k`` is rows ``k * chunk_rows`` to ``(k + 1) * chunk_rows``).
        columns: the columns read (all when None).
    """

    def __init__(
        self,
        table: ManifestTable,
        to_record: Callable[[int, dict], Any],
        chunk_rows: int = 4096,
        columns: Sequence[str] | None = None,
    ) -> None:
        self.table, self.to_record, self.chunk_rows = table, to_record, chunk_rows
        self.columns = table._select(columns)
        self._length = table.num_rows
        self._cache: OrderedDict[int, dict[str, list]] = OrderedDict()

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int | slice) -> Any:  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._length))]
        row = index + self._length if index < 0 else index
        if not 0 <= row < self._length:
            raise IndexError(f"row {index} out of range for {self._length} rows")
        block, at = divmod(row, self.chunk_rows)
        chunk = self._chunk(block)
        return self.to_record(row, {c: chunk[c][at] for c in self.columns})

    def _chunk(self, block: int) -> dict[str, list]:
        if block in self._cache:
            self._cache.move_to_end(block)
            return self._cache[block]
        start = block * self.chunk_rows
        chunk = next(self.table.column_chunks(start, self.chunk_rows, self.columns))[1]
        self._cache[block] = chunk
        if len(self._cache) > 2:  # two: a sequential reader crossing a chunk border does not decode twice
            self._cache.popitem(last=False)
        return chunk

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": OrderedDict()}
