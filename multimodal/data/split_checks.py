"""The per-row checks of a training manifest's one pass, each in memory that does not grow with the rows: cells that
are not text, split values, repeated ids (hashes in sorted arrays) and missing local photos (one file-system call per
distinct path of a window of rows)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from multimodal.data.manifest import _SPLIT_ALIASES, MISSING, cell_text, hash_split
from multimodal.data.photo_reader import PhotoReader
from multimodal.data.photos import kept_photos, photo_list
from multimodal.errors import BadSampleError, UserError

_SECOND_KEY = "multimodal-ids-2"  # pandas' hash with a second 16-byte key: 128 bits per id in all
_PHOTO_CACHE = 65536  # distinct photo paths remembered before the cache starts again


class CellChecks:
    """The first cell of each column that is not text, and the first bad split value, as reading the manifest
    whole reports them: by column (in the order given), then the split.

    Args:
        source: the manifest, named in errors.
        columns: the columns whose cells must be text (those known to hold only text and numbers need no check).
    """

    def __init__(self, source: str, columns: Sequence[str]) -> None:
        self.source, self.columns = source, list(columns)
        self.cells: dict[str, str] = {}
        self.split: str | None = None

    @property
    def failed(self) -> bool:
        """Whether a cell or a split value refuses the manifest (its rows need no more checking)."""
        return bool(self.cells) or self.split is not None

    def check(self, first: int, chunk: dict[str, list]) -> None:
        """Check the cells of a chunk whose first row is ``first`` (a column already refused is skipped)."""
        for column in [c for c in self.columns if c not in self.cells]:
            for row, value in enumerate(chunk[column], start=first):
                try:
                    cell_text(value, f"manifest {self.source} row {row}, column '{column}'")
                except UserError as err:
                    self.cells[column] = str(err)
                    break

    def raise_first(self) -> None:
        """Raise the error reading the manifest whole raised first, if any."""
        for column in self.columns:
            if column in self.cells:
                raise UserError(self.cells[column])
        if self.split is not None:
            raise UserError(self.split)


def id_texts(cells: list[Any]) -> list[str | None]:
    """Id cells as text (a cell that is not text is None here: :class:`CellChecks` reports it)."""
    out = []
    for value in cells:
        try:
            out.append(value if isinstance(value, str) else cell_text(value, ""))
        except UserError:
            out.append(None)
    return out


def clean_texts(texts: list[str | None]) -> list[str | None]:
    """:func:`multimodal.data.manifest.clean_value` of each text, the common case inlined (a million ids a pass)."""
    return [None if v is None or (t := v.strip()) in MISSING else t for v in texts]


def chunk_splits(
    first: int, id_cells: list[Any], texts: list[str | None], split_cells: list[Any] | None, rule: Any, csv: bool,
    checks: CellChecks,
) -> list[str]:  # fmt: skip
    """Each row's split: its split cell when the manifest has that column, else the hash of its id as read whole
    (a missing CSV cell was pandas' NaN, a null elsewhere ``None``). A bad split value is noted in ``checks``."""
    if split_cells is None:
        keys = ["nan" if csv and v is None else str(t) for v, t in zip(id_cells, texts, strict=True)]
        return [hash_split(k, rule.val_fraction, rule.test_fraction, rule.salt) for k in keys]
    out = []
    names: dict[Any, str | None] = {}  # by distinct cell: a split column holds a few values in many rows
    for row, value in enumerate(split_cells, start=first):
        value = float("nan") if csv and value is None else value
        try:
            name = names[value]
        except (KeyError, TypeError):
            name = _SPLIT_ALIASES.get(str(value).strip().lower())
            if isinstance(value, str):
                names[value] = name
        if name is None and checks.split is None:
            checks.split = f"row {row}: split column '{rule.column}' has '{value}' (use train, val or test)"
        out.append(name or "train")
    return out


class IdIndex:
    """The ids seen so far as two 64-bit hashes each (sorted) with the row of their first occurrence."""

    def __init__(self) -> None:
        self.hashes = np.zeros(0, np.uint64)
        self.checks = np.zeros(0, np.uint64)
        self.rows = np.zeros(0, np.int64)

    def first_rows(self, ids: list[str | None], first: int) -> list[int]:
        """For each id of the rows from ``first`` on, the row that had it first (-1: new, or empty); new ids are
        remembered."""
        out = [-1] * len(ids)
        at = [i for i, v in enumerate(ids) if v is not None]
        if not at:
            return out
        texts = np.asarray([ids[i] for i in at], dtype=object)
        h = pd.util.hash_array(texts, categorize=False)
        g = pd.util.hash_array(texts, hash_key=_SECOND_KEY, categorize=False)
        pos = np.searchsorted(self.hashes, h)
        for k in np.flatnonzero(self.hashes[np.minimum(pos, len(self.hashes) - 1)] == h) if len(self.hashes) else ():
            j = int(pos[k])
            while j < len(self.hashes) and self.hashes[j] == h[k]:  # a run longer than one: a 64-bit collision
                if self.checks[j] == g[k]:
                    out[at[k]] = int(self.rows[j])
                    break
                j += 1
        local: dict[str, int] = {}
        new = []
        for k, i in enumerate(at):
            if out[i] < 0:
                if ids[i] in local:
                    out[i] = local[ids[i]]
                else:
                    local[ids[i]] = first + i
                    new.append(k)
        self._add(h[new], g[new], np.asarray([first + at[k] for k in new], np.int64))
        return out

    def _add(self, h: np.ndarray, g: np.ndarray, rows: np.ndarray) -> None:
        # Inserted in place of a re-sort: the arrays stay sorted at the cost of one copy per chunk.
        order = np.argsort(h, kind="stable")
        h, g, rows = h[order], g[order], rows[order]
        where = np.searchsorted(self.hashes, h, side="right")
        self.hashes = np.insert(self.hashes, where, h)
        self.checks = np.insert(self.checks, where, g)
        self.rows = np.insert(self.rows, where, rows)


BadRow = Callable[[int, str, str], None]


class PhotoCheck:
    """A row's photos: those past ``max_images``, and whether the local ones exist (URLs are taken as they are: they
    are fetched when read).

    Args:
        reader: the image root, confinement and fetching of the data.
        source: the manifest, named in errors.
        columns: the data's :class:`multimodal.data.splits.DataColumns`.
    """

    def __init__(self, reader: PhotoReader, source: str, columns: Any) -> None:
        self.reader, self.source, self.columns = reader, source, columns
        self._missing: dict[str, str | None] = {}
        self._found: dict[str, int] = {}  # text cells all of whose photos exist -> how many are past max_images

    def usable(self, row: int, item_id: str, cell: Any, scan: Any, bad: BadRow, bad_photo: BadRow | None) -> bool:
        """Whether the row can be used (``bad`` is told when none of its photos exists); a missing photo of a row
        that keeps others goes to ``bad_photo`` and the found ones' positions to ``scan.kept``."""
        over = self._found.get(cell) if isinstance(cell, str) else None
        if over is not None:
            scan.over_max_images += over
            return True
        where = f"{self.source} row {row} (id {item_id})"
        photos = photo_list(cell, f"{where}, column '{self.columns.image}'")
        listed, ignored = kept_photos(photos, self.columns.max_images)
        reasons = [self.missing(p) if isinstance(p, str) else None for p in listed]
        missing = [r for r in reasons if r is not None]
        if listed and len(missing) == len(listed):
            bad(row, item_id, f"{where}: {missing[0]}")
            return False
        for message in missing:
            if bad_photo is not None:
                bad_photo(row, item_id, f"{where}: {message}")
        if missing:
            scan.kept[row] = tuple(k for k, r in enumerate(reasons) if r is None)
        elif isinstance(cell, str):
            if len(self._found) >= _PHOTO_CACHE:
                self._found.clear()
            self._found[cell] = len(ignored)
        scan.over_max_images += len(ignored)
        return True

    def missing(self, photo: str) -> str | None:
        """Why ``photo`` cannot be read (not found, outside the root), or None."""
        if photo in self._missing:
            return self._missing[photo]
        try:
            path = self.reader.local_path(photo)  # None: a URL, fetched when read
            reason = f"image not found: {path}" if path is not None and not path.is_file() else None
        except BadSampleError as err:
            reason = str(err)
        if len(self._missing) >= _PHOTO_CACHE:  # a catalogue of distinct photos: keep the memory bounded
            self._missing.clear()
        self._missing[photo] = reason
        return reason
