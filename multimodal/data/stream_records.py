"""A manifest larger than memory as the product records of a batch job: one record per row, decoded when asked for.

:class:`ManifestRecords` gives what :func:`multimodal.data.inputs.frame_records` gives for a whole DataFrame (every
row a record, an empty or repeated id an error record naming the first row, text cells made text by
:func:`multimodal.data.manifest.cell_text`) while holding only the ids' hashes and two decoded chunks. Before a job
starts, :func:`check_cells` reads the columns that may hold a cell that is not text (JSONL columns, Parquet columns of
list types; never a CSV one) once, so a bad cell is the same one-line error, naming the same row and column, as
when the manifest was read whole, and not a failure half-way through a long job.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from multimodal.data.inputs import row_record
from multimodal.data.manifest import cell_text, clean_value
from multimodal.data.photos import photo_list
from multimodal.data.stream import LazyRows, ManifestTable, scan_ids
from multimodal.data.stream_parquet import ParquetSource, _holds_dicts
from multimodal.errors import UserError

_CHUNK_ROWS = 8192


def dict_columns(table: ManifestTable) -> set[str]:
    """The Parquet columns of struct or map types (reading them is a one-line error at their first cell)."""
    source = table._source
    if not isinstance(source, ParquetSource):
        return set()
    return {c for c in table.columns if any(_holds_dicts(p.schema.field(c).type) for p in source.parts)}


def cell_failures(table: ManifestTable, columns: Sequence[str], photos: str | None = None) -> dict[str, str]:
    """The first cell of each of ``columns`` that :func:`cell_text` refuses (and of the ``photos`` column, the first
    that :func:`photo_list` refuses), as ``"row R, column 'c': why"``; columns known to hold only text, numbers and
    nulls are not read.

    Raises:
        UserError: a struct or map cell in a column read (named by the reader).
    """
    plain = table.plain_columns()
    todo = [c for c in dict.fromkeys(columns) if c not in plain and c != photos]
    check_photos = photos is not None and photos in table.columns and photos not in plain
    read = [*todo, *([photos] if check_photos else [])]
    failures: dict[str, str] = {}
    if not read:
        return failures
    for first, chunk in table.column_chunks(0, _CHUNK_ROWS, read):
        for column in [c for c in read if c not in failures]:
            check = photo_list if column == photos else cell_text
            for row, value in enumerate(chunk[column], start=first):
                try:
                    check(value, f"row {row}, column '{column}'")
                except UserError as err:
                    failures[column] = str(err)
                    break
        if len(failures) == len(read):
            break
    return failures


def check_cells(table: ManifestTable, source: str, first: Sequence[str], then: Sequence[str], photos: str) -> None:
    """Refuse the manifest at the bad cell reading it whole would have stopped at: the ``first`` columns (those
    a job requires, in order), then the ``then`` columns (the other text, label and tag columns a model reads), then
    the photo cells row by row."""
    then = [c for c in dict.fromkeys(then) if c in table.columns and c not in first and c != photos]
    first = [c for c in dict.fromkeys(first) if c != photos]
    failures = cell_failures(table, [*first, *then], photos)
    for column in first:
        if column in failures:
            raise UserError(f"manifest {source} {failures[column]}")
    for column in [*then, photos]:
        if column in failures:
            raise UserError(f"{source} {failures[column]}")


class RowRecord:
    """``(row number, {column: cell}) -> ProductRecord``, as ``frame_records`` builds each row's record; it pickles
    (a DataLoader worker builds records too).

    Args:
        columns: the model's :class:`multimodal.artefact.Columns`.
        source: the manifest, named in errors.
        require_image: a row without a photo is an error row.
        id_errors: row number -> why its id cannot be used (empty, or repeated: naming the first row).
    """

    def __init__(self, columns: Any, source: str, require_image: bool, id_errors: dict[int, str]) -> None:
        self.columns, self.source, self.require_image, self.id_errors = columns, source, require_image, id_errors
        cols = columns
        self.texts = [c for c in dict.fromkeys([cols.id, *cols.texts, *cols.attributes, *cols.tags]) if c != cols.image]

    def __call__(self, row: int, cells: dict[str, Any]) -> Any:
        where = f"{self.source} row {row}, column"
        for column in self.texts:
            if column in cells:
                cells[column] = cell_text(cells[column], f"{where} '{column}'")
        item_id = clean_value(cells[self.columns.id])
        error = self.id_errors.get(row)
        return row_record(row, item_id, cells, self.columns, self.source, self.require_image, error)


class ManifestRecords(LazyRows):
    """The record of every row of a manifest, in row order, decoded a chunk at a time.

    Args:
        table: the manifest (with the id column).
        columns: the model's columns.
        source: the manifest, named in errors.
        require_image: a row without a photo is an error row (captioning).
        chunk_rows: rows decoded together.

    Attributes:
        ids_sha256: the hash of every row's id in order (``""`` for an empty one), as
            :func:`multimodal.search.export.ids_sha256` gives for the records' ids.
        problems: the rows whose id is empty or repeated (``id``, ``row``, ``reason``), as ``frame_records`` lists them.
    """

    def __init__(
        self, table: ManifestTable, columns: Any, source: str, require_image: bool = False, chunk_rows: int = 4096
    ) -> None:
        scan = scan_ids(table, columns.id)
        self.ids_sha256 = scan.ids_sha256
        self.problems = scan.problems(source)
        id_errors = {p["row"]: p["reason"] for p in self.problems}
        read = [columns.id, *columns.texts, *columns.attributes, *columns.tags, columns.image]
        read = [c for c in dict.fromkeys(read) if c in table.columns]
        super().__init__(table, RowRecord(columns, source, require_image, id_errors), chunk_rows, read)
