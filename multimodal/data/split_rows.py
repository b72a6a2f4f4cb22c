"""A split of a training manifest as a sequence of product records, decoded from the manifest a chunk at a time.

:class:`RowSubset` maps a position to a row number (one int64 array per split) and the row to its record; it holds
no record, pickles without rows (DataLoader workers reopen the manifest) and reads only the columns the data uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from multimodal.data.fetch import is_remote
from multimodal.data.manifest import cell_text, clean_value, split_tags
from multimodal.data.photo_reader import PhotoReader
from multimodal.data.photos import kept_photos, photo_list
from multimodal.data.records import ProductRecord
from multimodal.data.splits import BadRow, DataColumns, SplitRule, SplitScan, scan_splits
from multimodal.data.stream import LazyRows, ManifestTable


class TrainingRecord:
    """``(row number, {column: cell}) -> ProductRecord`` of a usable training-manifest row, as reading it whole built
    it: text cells made text and cleaned, tags split, photos past ``max_images`` set aside, missing ones left out.

    Args:
        columns: the data's :class:`multimodal.data.splits.DataColumns`.
        source: the manifest, named in errors.
        kept: rows some of whose photos are missing -> the positions of the found ones among its photos.
    """

    def __init__(self, columns: Any, source: str, kept: dict[int, tuple[int, ...]]) -> None:
        self.columns, self.source, self.kept = columns, source, kept

    def __call__(self, row: int, cells: dict[str, Any]) -> ProductRecord:
        cols = self.columns

        def text(column: str) -> str | None:
            return clean_value(cell_text(cells[column], f"manifest {self.source} row {row}, column '{column}'"))

        item_id = text(cols.id)
        where = f"{self.source} row {row} (id {item_id}), column '{cols.image}'"
        photos, ignored = kept_photos(photo_list(cells[cols.image], where), cols.max_images)
        if row in self.kept:
            photos = [photos[k] for k in self.kept[row]]
        return ProductRecord(
            row=row,
            id=item_id or "",
            photos=photos,
            texts={c: text(c) for c in cols.texts},
            labels={a: text(a) for a in cols.attributes},
            tags={c: split_tags(text(c), cols.tag_separator) for c in cols.tags},
            ignored_photos=ignored,
        )


class RowSubset(Sequence):
    """The records of some rows of a manifest, in the order of ``rows``.

    Args:
        rows: the rows (int64 row numbers).
        lazy: the manifest's rows as records (:class:`multimodal.data.stream.LazyRows`); several subsets may share one.
    """

    def __init__(self, rows: np.ndarray, lazy: LazyRows) -> None:
        self.rows, self.lazy = np.asarray(rows, dtype=np.int64), lazy

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int | slice) -> Any:  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self.rows)))]
        return self.lazy[int(self.rows[index])]

    def __iter__(self) -> Any:
        return (self.lazy[int(row)] for row in self.rows)


def rows_of(table: ManifestTable, columns: Any, source: str, kept: dict[int, tuple[int, ...]]) -> LazyRows:
    """Every row of ``table`` as a training record, reading only the configured columns."""
    read = list(dict.fromkeys(columns.required))
    return LazyRows(table, TrainingRecord(columns, source, kept), chunk_rows=4096, columns=read)


def joined(parts: Sequence[Sequence[ProductRecord]]) -> Sequence[ProductRecord]:
    """The records of several splits one after the other: one subset when they are subsets of one manifest."""
    lazies = {id(p.lazy) for p in parts if isinstance(p, RowSubset)}
    if len(lazies) == 1 and all(isinstance(p, RowSubset) for p in parts):
        return RowSubset(np.concatenate([p.rows for p in parts]), parts[0].lazy)  # type: ignore[attr-defined]
    return [r for p in parts for r in p]


def read_splits(
    manifest: Path | str,
    photos: PhotoReader,
    columns: DataColumns,
    rule: SplitRule,
    bad: BadRow,
    bad_photo: BadRow | None = None,
) -> tuple[SplitScan, dict[str, RowSubset]]:
    """One pass over ``manifest`` (:func:`multimodal.data.splits.scan_splits`: what it checks and counts), and the
    records of each split as a :class:`RowSubset` (the splits share one chunk cache)."""
    source = str(manifest)
    table = ManifestTable(source, columns.required)
    scan = scan_splits(table, source, photos, columns, rule, bad, bad_photo)
    lazy = rows_of(table, columns, source, scan.kept)
    return scan, {s: RowSubset(rows, lazy) for s, rows in scan.rows.items()}


def manifest_path(manifest: str | Path) -> Path | str:
    """A local manifest as a path (named in errors as pathlib writes it), a URL as it is."""
    return manifest if isinstance(manifest, str) and is_remote(manifest) else Path(manifest)


def manifest_folder(manifest: Path | str) -> Path | str:
    """Where relative photo paths point by default: the folder that holds the manifest (a file, or a Parquet dataset
    folder), as a path or a URL prefix ending in ``/``."""
    if isinstance(manifest, Path):
        return manifest.parent
    return manifest.rstrip("/").rsplit("/", 1)[0] + "/"
