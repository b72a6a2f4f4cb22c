"""Streaming a Parquet manifest (one file or a dataset of several) by row groups, from the files' footers.

Opening reads only the footers: row counts per row group and each file's schema, so a reader starting at row ``n``
skips whole row groups by their counts and decodes at most one row group's worth of rows it does not return.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from multimodal.errors import UserError


@dataclass(frozen=True)
class ParquetPart:
    """One file of a Parquet manifest, as its footer describes it."""

    path: str  # in the file system
    name: str  # as errors name it
    schema: pa.Schema
    group_rows: tuple[int, ...]


def _same_kind(a: pa.DataType, b: pa.DataType) -> bool:
    """Whether two files agree on a column's type: equal, or one column all null (pandas writes such a column with
    the null type), or string and large_string (both read as Python text)."""
    texts = (pa.string(), pa.large_string())
    return a.equals(b) or pa.types.is_null(a) or pa.types.is_null(b) or (a in texts and b in texts)


def _holds_dicts(kind: pa.DataType) -> bool:
    if pa.types.is_struct(kind) or pa.types.is_map(kind):
        return True
    nested = pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    return nested and _holds_dicts(kind.value_type)


class ParquetSource:
    """The rows of one Parquet file or of several read one after the other (in the order given).

    Args:
        fs: the fsspec file system holding the files.
        paths: the files' paths in ``fs``, in row order.
        names: the files as errors name them.

    Raises:
        UserError: a file that is not Parquet, or two files that disagree on a column's type or on the columns.
    """

    def __init__(self, fs: Any, paths: list[str], names: list[str]) -> None:
        self.fs = fs
        self.parts = [self._footer(path, name) for path, name in zip(paths, names, strict=True)]
        self.columns = list(self.parts[0].schema.names)
        self._check_schemas()
        # First row of every row group of every file, in order, and where that group is: (part, group).
        self._group_starts: list[int] = []
        self._groups: list[tuple[int, int]] = []
        total = 0
        for p, part in enumerate(self.parts):
            for g, rows in enumerate(part.group_rows):
                self._group_starts.append(total)
                self._groups.append((p, g))
                total += rows
        self.num_rows = self.counted_rows = total

    def _footer(self, path: str, name: str) -> ParquetPart:
        try:
            with self.fs.open(path, "rb") as f:
                meta = pq.ParquetFile(f).metadata
                schema = meta.schema.to_arrow_schema()
                groups = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
        except (OSError, ValueError, pa.ArrowException) as err:
            raise UserError(f"manifest {name} could not be read as Parquet: {err}") from err
        return ParquetPart(path, name, schema, groups)

    def _check_schemas(self) -> None:
        first = self.parts[0]
        for part in self.parts[1:]:
            for column in sorted(set(first.schema.names) ^ set(part.schema.names)):
                has, lacks = (first, part) if column in first.schema.names else (part, first)
                raise UserError(f"Parquet manifest: {has.name} has column '{column}' and {lacks.name} has not")
            for field in part.schema:
                kind = first.schema.field(field.name).type
                if not _same_kind(kind, field.type):
                    raise UserError(
                        f"Parquet manifest: column '{field.name}' is {kind} in {first.name} and {field.type} in "
                        f"{part.name}; every file of a dataset must give a column one type"
                    )

    def batches(self, start: int, columns: list[str], batch_rows: int) -> Iterator[tuple[str, dict[str, list]]]:
        """Column lists of at most ``batch_rows`` rows each, the first beginning at row ``start``."""
        if start >= self.num_rows:
            return
        at = bisect.bisect_right(self._group_starts, start) - 1
        first_part, first_group = self._groups[at]
        skip, row = start - self._group_starts[at], self._group_starts[at]
        for p in range(first_part, len(self.parts)):
            part = self.parts[p]
            groups = list(range(first_group if p == first_part else 0, len(part.group_rows)))
            if not groups:
                continue
            with self.fs.open(part.path, "rb") as f:
                reader = pq.ParquetFile(f)
                for group in groups:
                    # One reader per row group: asked for several, arrow pre-buffers all of them at once and keeps
                    # them (memory growing with the file); one at a time keeps one group's bytes.
                    for batch in reader.iter_batches(batch_rows, [group], columns, use_threads=False):
                        if skip >= batch.num_rows:
                            skip, row = skip - batch.num_rows, row + batch.num_rows
                            continue
                        batch, row, skip = batch.slice(skip), row + skip, 0
                        _refuse_dicts(batch, part, row)
                        yield part.name, batch.to_pydict()
                        row += batch.num_rows


def _refuse_dicts(batch: pa.RecordBatch, part: ParquetPart, row: int) -> None:
    """A one-line error at the first struct or map cell of ``batch`` (its first row is row ``row``)."""
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        if _holds_dicts(column.type) and column.null_count < len(column):
            first = row + pc.index(pc.is_valid(column), True).as_py()
            raise UserError(
                f"manifest {part.name} row {first}, column '{name}': a {column.type} cell; "
                "cells hold text, numbers or lists"
            )
