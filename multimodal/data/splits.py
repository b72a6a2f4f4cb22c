"""A training manifest read into splits in one streaming pass: every row checked (its id, its photos), a bad one
refused or skipped through the caller's policy, and what the data report and the label vocabularies need counted.

Nothing is kept per row but its row number (in one int64 array per split): the records are decoded again, a chunk
at a time, when a dataset asks for them (:class:`multimodal.data.split_rows.RowSubset`). Repeated ids are found with
16 bytes of hashes and 8 bytes of row number per distinct id, and the photo-existence check asks the file system once
per distinct path of a chunk window.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from multimodal.data.manifest import (
    SPLITS,
    build_tag_vocabulary,
    build_vocabulary,
    cell_text,
    clean_value,
    split_tags,
)
from multimodal.data.photo_reader import PhotoReader
from multimodal.data.photos import DEFAULT_MAX_IMAGES
from multimodal.data.split_checks import CellChecks, IdIndex, PhotoCheck, chunk_splits, clean_texts, id_texts
from multimodal.data.stream import ManifestTable
from multimodal.errors import UserError

# (row, product id, one-line message) of a row that cannot be used: the caller raises or records it
BadRow = Callable[[int, str, str], None]
_CHUNK_ROWS = 8192


@dataclass(frozen=True)
class DataColumns:
    """Which manifest columns hold the id, the image path, the texts, the attributes and the tags."""

    id: str
    image: str
    texts: list[str]
    attributes: list[str]
    tags: list[str]
    tag_separator: str
    max_images: int = DEFAULT_MAX_IMAGES

    @property
    def required(self) -> list[str]:
        """Every column the manifest must have."""
        return [self.id, self.image, *self.texts, *self.attributes, *self.tags]

    @property
    def text_cells(self) -> list[str]:
        """The required columns whose cells are made text (every one but the photos), in order."""
        return [c for c in dict.fromkeys(self.required) if c != self.image]


@dataclass(frozen=True)
class SplitRule:
    """How rows are split: a split column when present, else a stable hash of the id with these shares."""

    column: str | None
    val_fraction: float
    test_fraction: float
    salt: str


@dataclass
class SplitScan:
    """What one pass over a training manifest found.

    Attributes:
        rows: the usable rows of each split, in row order.
        kept: for a row some (not all) of whose photos are missing, the positions of the found ones among its photos.
        labels: per split and attribute, how often each known value occurs (in order of first appearance).
        tags: the distinct tags of each tag column over the training split.
        over_max_images: photos past ``max_images`` over every usable row.
    """

    rows: dict[str, np.ndarray]
    kept: dict[int, tuple[int, ...]] = field(default_factory=dict)
    labels: dict[str, dict[str, Counter]] = field(default_factory=dict)
    tags: dict[str, set[str]] = field(default_factory=dict)
    over_max_images: int = 0


class _Pass:
    """The state of one pass; rows are fed a chunk at a time, in order."""

    def __init__(self, source: str, photos: PhotoReader, columns: DataColumns, rule: SplitRule) -> None:
        self.source, self.columns, self.rule = source, columns, rule
        self.ids, self.photos = IdIndex(), PhotoCheck(photos, source, columns)
        self.parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
        self.scan = SplitScan({}, labels={s: {a: Counter() for a in columns.attributes} for s in SPLITS})
        self.scan.tags = {c: set() for c in columns.tags}
        self.error: UserError | None = None  # the first row that stopped the pass (policy ``error``, or a dict cell)

    def chunk(
        self, first: int, chunk: dict[str, list], texts: list, splits: list[str], bad: BadRow, bad_photo: BadRow | None
    ) -> None:
        """Check the rows of one chunk (``texts``: their ids as text, ``splits``: their splits) and count what the
        usable ones hold."""
        ids = clean_texts(texts)
        firsts = self.ids.first_rows(ids, first)
        images = chunk[self.columns.image]
        out: dict[str, list[int]] = {s: [] for s in SPLITS}
        for i, item_id in enumerate(ids):
            row, seen = first + i, firsts[i]
            if item_id is None or seen >= 0:
                what = "an empty id" if item_id is None else f"duplicate id '{item_id}' (first at row {seen})"
                bad(row, str(item_id), f"{self.source} row {row}: {what} in column '{self.columns.id}'")
            elif self.photos.usable(row, item_id, images[i], self.scan, bad, bad_photo):
                out[splits[i]].append(i)
        for split, at in out.items():
            if at:
                self.parts[split].append(np.asarray(at, dtype=np.int64) + first)
                self._count(split, chunk, at)

    def _count(self, split: str, chunk: dict[str, list], at: list[int]) -> None:
        """Count the labels of a split's usable rows of a chunk (and, in training, their tags), by distinct cell: a
        catalogue repeats few values in many rows. Counters keep the order in which values first appear."""
        for a, counter in self.scan.labels[split].items():
            for value, n in Counter(map(chunk[a].__getitem__, at)).items():
                known = clean_value(cell_text(value, ""))
                if known is not None:
                    counter[known] += n
        if split == "train":
            for c, seen in self.scan.tags.items():
                for value in set(map(chunk[c].__getitem__, at)):
                    seen.update(split_tags(clean_value(cell_text(value, "")), self.columns.tag_separator) or ())

    def finish(self) -> SplitScan:
        """What the pass found, each split's rows in one array."""
        self.scan.rows = {s: np.concatenate(p) if p else np.zeros(0, np.int64) for s, p in self.parts.items()}
        return self.scan


def scan_splits(
    table: ManifestTable,
    source: str,
    photos: PhotoReader,
    columns: DataColumns,
    rule: SplitRule,
    bad: BadRow,
    bad_photo: BadRow | None = None,
) -> SplitScan:
    """Split and check every row of ``table`` in one pass, reading only the columns configured.

    ``bad`` is told of each row with an empty or repeated id, or whose local photos are all missing (or, with
    ``confine_images``, outside the image root); ``bad_photo`` of each missing photo of a product that keeps others.
    A bad cell refuses the manifest with the error reading it whole gave first: a cell that is not text (by column,
    then row), then a split value, then the first row ``bad`` raised for (the pass goes on only to check cells).
    """
    csv = getattr(table._source, "kind", None) == "csv"  # cells pandas read as NaN are None here
    split_column = rule.column if rule.column and rule.column in table.columns else None
    read = list(dict.fromkeys([*columns.required, *([split_column] if split_column else [])]))
    checks = CellChecks(source, [c for c in columns.text_cells if c not in table.plain_columns()])
    state = _Pass(source, photos, columns, rule)
    rows = 0
    for first, chunk in table.column_chunks(0, _CHUNK_ROWS, read):
        rows = first + len(chunk[read[0]])
        checks.check(first, chunk)
        texts = id_texts(chunk[columns.id])
        cells = chunk[split_column] if split_column else None
        splits = chunk_splits(first, chunk[columns.id], texts, cells, rule, csv, checks)
        if checks.failed or state.error is not None:
            continue  # the manifest is refused: only its cells are still checked, for the error reading it whole gave
        try:
            state.chunk(first, chunk, texts, splits, bad, bad_photo)
        except UserError as err:
            state.error = err
    checks.raise_first()
    if state.error is not None:
        raise state.error
    scan = state.finish()
    if not any(len(r) for r in scan.rows.values()):
        raise UserError(f"manifest {source}: no usable product (all {rows} rows skipped)")
    return scan


def training_vocabularies(
    scan: SplitScan, attributes: list[str], tag_columns: list[str], manifest: object
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Label vocabularies per attribute and per tag column, from the training split's known values."""
    if (attributes or tag_columns) and not len(scan.rows["train"]):
        raise UserError(f"manifest {manifest}: the training split is empty")
    vocab = {a: build_vocabulary(list(scan.labels["train"][a])) for a in attributes}
    tags = {c: build_tag_vocabulary([sorted(scan.tags[c])]) for c in tag_columns}
    for name, values in {**vocab, **tags}.items():
        if not values:
            raise UserError(f"column '{name}': no known value in the training split of {manifest}")
    return vocab, tags


def unseen_labels(scan: SplitScan, vocabularies: dict[str, list[str]]) -> dict[str, dict[str, dict[str, int]]]:
    """Per validation / test split and attribute, how often each known label outside the vocabulary occurs."""
    unseen: dict[str, dict[str, dict[str, int]]] = {}
    for split in ("val", "test"):
        for a, vocab in vocabularies.items():
            known = set(vocab)
            counts = {v: n for v, n in scan.labels[split].get(a, {}).items() if v not in known}
            if counts:
                unseen.setdefault(split, {})[a] = counts
    return unseen


def label_counts(scan: SplitScan, vocabularies: dict[str, list[str]]) -> dict[str, list[int]]:
    """Per attribute, how many training products hold each label of its vocabulary (in vocabulary order)."""
    return {a: [int(scan.labels["train"].get(a, {}).get(v, 0)) for v in vocab] for a, vocab in vocabularies.items()}
