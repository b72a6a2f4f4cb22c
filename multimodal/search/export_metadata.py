"""What an export stores next to each vector: the manifest's columns chosen for the products table (``--columns``,
or by default every column whose cells are text), read for each shard from the manifest rows of that shard."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from multimodal.errors import UserError
from multimodal.job_state import Row

RESERVED = ("id", "image_path")  # the products table's own columns: the id and the photo's path


def metadata_columns(
    df: pd.DataFrame, id_column: str, image_column: str, chosen: list[str] | None, source: str
) -> tuple[pd.DataFrame, list[str], list[str]]:
    """The manifest columns an export stores next to the ids, so that `search --where` and `--lexical` find them.

    Args:
        df: the manifest as read (``chosen`` columns already text).
        chosen: ``--columns`` (None: every column but the id and image columns, which are stored as ``id`` and
            ``image_path``; an empty list: none).
        source: the manifest, named in messages.
    Returns:
        ``df`` with the kept columns as text, the kept columns, and why each other column was left out of the
        default: a cell is a list, a dict or another object (a Parquet or JSONL manifest's), or its name is
        ``id`` / ``image_path``.
    """
    if chosen is not None:
        clash = [c for c in chosen if c in RESERVED]
        if clash:
            raise UserError(f"--columns {clash}: the products table stores the id and image_path anyway")
        return df, list(dict.fromkeys(chosen)), []
    from multimodal.data.manifest import as_text

    text, dropped = {}, []
    for column in df.columns:
        if column in (id_column, image_column):
            continue
        if column in RESERVED:  # another column under the products table's own name
            dropped.append(f"{source} column '{column}': a name the products table keeps for its own column")
            continue
        try:
            text[column] = as_text(df[[column]], [column], source)[column]
        except UserError as err:  # a list or an object per cell: no text to filter on or to search
            dropped.append(str(err))
    return df.assign(**text), list(text), dropped


def product_metadata(
    df: pd.DataFrame, ids: set[str], id_column: str, image_column: str, columns: list[str]
) -> dict[str, dict[str, Any]]:
    """id -> {column: value as text or None, ``image_path``} of the first row of each of ``ids``."""
    from multimodal.data.manifest import clean_value

    metadata: dict[str, dict[str, Any]] = {}
    for rec in df.to_dict("records"):
        item = clean_value(rec[id_column])
        if item in ids and item not in metadata:
            metadata[item] = {c: clean_value(rec[c]) for c in columns}
            metadata[item]["image_path"] = clean_value(rec.get(image_column))
    return metadata


def stored_columns(
    table: Any, id_column: str, image_column: str, chosen: list[str] | None, source: str
) -> tuple[list[str], list[str]]:
    """:func:`metadata_columns` of a streamed manifest (:class:`multimodal.data.stream.ManifestTable`): the kept
    columns and why each other one was left out of the default, reading only the columns whose cells may not be
    text (JSONL; Parquet list columns), once."""
    if chosen is not None:
        clash = [c for c in chosen if c in RESERVED]
        if clash:
            raise UserError(f"--columns {clash}: the products table stores the id and image_path anyway")
        return list(dict.fromkeys(chosen)), []
    from multimodal.data.stream_records import cell_failures, dict_columns

    nested = dict_columns(table)
    skip = {id_column, image_column, *RESERVED, *nested}
    failures = cell_failures(table, [c for c in table.columns if c not in skip])
    kept, dropped = [], []
    for column in table.columns:  # the reasons in column order, as metadata_columns gives them
        if column in (id_column, image_column):
            continue
        if column in RESERVED:
            dropped.append(f"{source} column '{column}': a name the products table keeps for its own column")
        elif column in nested:
            dropped.append(f"{source} column '{column}': struct or map cells; cells hold text, numbers or lists")
        elif column in failures:
            dropped.append(f"{source} {failures[column]}")
        else:
            kept.append(column)
    return kept, dropped


class ManifestMetadata:
    """Each shard's products-table columns, read from the manifest rows of that shard's products (rows carry their
    ``manifest_row``): nothing holds every product's metadata at once.

    Values are those :func:`product_metadata` gives: each column's cell made text (the photo column as read), then
    cleaned; ``image_path`` the photo cell cleaned.

    Args:
        table: the manifest.
        image_column: the photo column.
        columns: the columns stored.
        source: the manifest, named in errors.
    """

    def __init__(self, table: Any, image_column: str, columns: list[str], source: str) -> None:
        self.table, self.image, self.source = table, image_column, source
        self.columns = [*columns, "image_path"]
        self._stored = list(columns)
        self._read = [c for c in dict.fromkeys([*columns, image_column]) if c in table.columns]

    def __call__(self, rows: list[Row]) -> Mapping[str, dict[str, Any]]:
        """id -> {column: value} of the rows predicted (those without an ``error``)."""
        from multimodal.data.manifest import cell_text, clean_value

        done = [r for r in rows if "error" not in r]
        if not done:
            return {}
        positions = [r["manifest_row"] for r in done]
        first, chunk = next(self.table.column_chunks(min(positions), max(positions) + 1 - min(positions), self._read))
        metadata = {}
        for r, position in zip(done, positions, strict=True):
            cells = {c: chunk[c][position - first] for c in self._read}
            where = f"{self.source} row {position}, column"
            meta = {
                c: clean_value(cells[c] if c == self.image else cell_text(cells[c], f"{where} '{c}'"))
                for c in self._stored
            }
            meta["image_path"] = clean_value(cells.get(self.image))
            metadata[r["id"]] = meta
        return metadata
