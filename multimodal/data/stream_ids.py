"""One streaming pass over a manifest's id column: the ids' order hash, empty ids and repeated ids.

Ids are read as :func:`multimodal.data.inputs.frame_records` reads them (the cell as text, stripped, ``NA`` and
friends empty), and an empty id counts as ``""`` in the hash, as a record's id does. Repeats are found with 8 bytes
per row (a hash of each id, sorted in place); only ids whose hash repeats are read a second time, to tell a real
repeat from a hash collision.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from multimodal.data.manifest import cell_text, clean_value

_CHUNK_ROWS = 65536


@dataclass
class IdScan:
    """What :func:`scan_ids` found.

    Attributes:
        ids_sha256: equal to ``multimodal.search.export.ids_sha256(ids)`` for the list of every row's id.
        num_rows: the rows read.
        empty_rows: the rows whose id is empty, in order.
        duplicates: ``(row, id, first row with that id)`` for every row that repeats an earlier id, in row order.
    """

    ids_sha256: str
    num_rows: int
    empty_rows: list[int] = field(default_factory=list)
    duplicates: list[tuple[int, str, int]] = field(default_factory=list)

    def problems(self, source: str) -> list[dict[str, Any]]:
        """The empty and repeated ids as ``frame_records`` reports them (``id``, ``row``, ``reason``), by row."""
        found = [{"id": None, "row": r, "reason": f"{source} row {r}: an empty id"} for r in self.empty_rows]
        for row, item_id, first in self.duplicates:
            reason = f"{source} row {row}: duplicate id '{item_id}' (first at row {first})"
            found.append({"id": item_id, "row": row, "reason": reason})
        return sorted(found, key=lambda p: p["row"])


def _id_texts(table: Any, id_column: str, rows: int) -> Iterator[tuple[int, list[str]]]:
    """Every row's id as text (``""`` when empty), a chunk at a time, with the chunk's first row."""
    for first, chunk in table.column_chunks(0, rows, [id_column]):
        texts = []
        for row, value in enumerate(chunk[id_column], start=first):
            if not isinstance(value, str):
                value = cell_text(value, f"manifest {table.path} row {row}, column '{id_column}'")
            texts.append(clean_value(value) or "")
        yield first, texts


def _hashes(texts: list[str]) -> np.ndarray:
    # pandas' vectorised SipHash with its fixed key: the same id gets the same 8 bytes in every pass and process.
    return pd.util.hash_array(np.asarray(texts, dtype=object), categorize=False)


def scan_ids(table: Any, id_column: str, chunk_rows: int = _CHUNK_ROWS) -> IdScan:
    """Hash the ids in order and find the empty and repeated ones, reading only the id column.

    Args:
        table: a :class:`multimodal.data.stream.ManifestTable`.
        id_column: the column holding product ids.
        chunk_rows: rows decoded at a time.

    Raises:
        UserError: an id cell that is a list or a dict (named by row and column).
    """
    digest = hashlib.sha256()
    # 8 bytes per non-empty id, written in place when the row count is known (no second copy while concatenating).
    hashes = np.empty(table.counted_rows or 0, np.uint64)
    parts: list[np.ndarray] = []
    empty: list[int] = []
    count = filled = 0
    for first, texts in _id_texts(table, id_column, chunk_rows):
        digest.update((("\n" if first else "") + "\n".join(texts)).encode())
        empty.extend(first + i for i, t in enumerate(texts) if not t)
        part = _hashes([t for t in texts if t])
        if filled + len(part) <= len(hashes):
            hashes[filled : filled + len(part)] = part
            filled += len(part)
        else:
            parts.append(part)
        count = first + len(texts)
    hashes = np.concatenate([hashes[:filled], *parts]) if parts else hashes[:filled]
    del parts
    hashes.sort()  # in place: repeats are neighbours
    repeated = np.unique(hashes[1:][hashes[1:] == hashes[:-1]])
    del hashes
    duplicates = _confirm(table, id_column, repeated, chunk_rows) if len(repeated) else []
    return IdScan(digest.hexdigest(), count, empty, duplicates)


def _confirm(table: Any, id_column: str, repeated: np.ndarray, rows: int) -> list[tuple[int, str, int]]:
    """A second pass keeping only the ids whose hash repeats; a hash shared by two different ids is no repeat."""
    first_row: dict[str, int] = {}
    duplicates = []
    for first, texts in _id_texts(table, id_column, rows):
        for i in np.flatnonzero(np.isin(_hashes(texts), repeated)):
            item_id, row = texts[i], first + int(i)
            if not item_id:
                continue
            if item_id in first_row:
                duplicates.append((row, item_id, first_row[item_id]))
            else:
                first_row[item_id] = row
    return duplicates
