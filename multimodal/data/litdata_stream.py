"""Training data streamed from litdata chunks: a folder (or bucket prefix) written by ``multimodal prepare``, read by
:class:`~multimodal.data.datamodule.ProductDataModule` (``data.stream``) exactly as it reads the manifest it came from.

A stream holds three things (:mod:`multimodal.data.litdata_prepare` writes them)::

    stream.json   the header: format version, the manifest's name, columns and row count, written last
    rows/         a litdata dataset: item k = the cells of rows k*B .. (k+1)*B - 1 as JSON, and the photos of those
                  rows that ``prepare`` found missing (with the reason reading the manifest gives)
    photos/       a litdata dataset: item r = the bytes of row r's photos, in the order of its photo cell

:class:`StreamTable` gives the rows as :class:`~multimodal.data.stream.ManifestTable` gives a manifest's (the same
cells, in order, a block at a time), so the one streaming pass of the data module splits, checks and counts them,
and its records are those of the manifest: same splits, vocabularies, transforms and the exact resume of ``fit``.
Photos come from ``photos/`` (litdata reads one item by its index from a local chunk or a cached bucket chunk) and
are decoded by the same rule as a fetched photo.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import fsspec
import numpy as np
from PIL import Image

from multimodal.data.dataset import ProductDataset, ProductRecord
from multimodal.data.fetch import decode_photo, is_remote
from multimodal.data.photo_reader import PhotoReader
from multimodal.data.split_rows import RowSubset, TrainingRecord, manifest_path
from multimodal.data.splits import BadRow, DataColumns, SplitRule, SplitScan, scan_splits
from multimodal.data.stream import LazyRows, check_chunking
from multimodal.errors import BadSampleError, UserError

FORMAT = "multimodal-litdata-stream"
VERSION = 1
HEADER = "stream.json"
_BLOCKS_KEPT = 64  # decoded row blocks kept per process: a shuffled epoch over a small stream decodes each once


def stream_path(stream: str) -> str:
    """A stream's folder as named in errors: a URL as given, a local folder as an absolute path."""
    return stream.rstrip("/") if is_remote(stream) else os.path.abspath(stream)


def training_source(manifest: str | None, stream: str | None) -> tuple[str | None, Path | str]:
    """What a data module reads: ``(the stream, its folder)`` when a stream is given (the manifest is then not read),
    else ``(None, the manifest)``; neither is a one-line error."""
    if stream:
        return stream_path(stream), stream_path(stream)
    if not manifest:
        raise UserError("data.manifest or data.stream is required: a manifest, or a stream from `multimodal prepare`")
    return None, manifest_path(manifest)


def read_header(stream: str) -> dict[str, Any]:
    """The header of the stream at ``stream``, checked: one-line errors for no stream there or another version."""
    try:
        with fsspec.open(f"{stream}/{HEADER}", "r") as f:
            header = json.load(f)
    except FileNotFoundError:
        raise UserError(f"stream {stream}: no {HEADER} there; write one with `multimodal prepare`") from None
    except (OSError, ValueError) as err:
        raise UserError(f"stream {stream}: {HEADER} could not be read ({err})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise UserError(f"stream {stream}: {HEADER} is not the header of a stream written by `multimodal prepare`")
    if header.get("version") != VERSION:
        raise UserError(
            f"stream {stream} was written in stream format version {header.get('version')}; this version of "
            f"multimodal reads version {VERSION}: run `multimodal prepare` again"
        )
    return header


def open_litdata(folder: str) -> Any:
    """litdata's ``StreamingDataset`` over one of a stream's datasets (read item by item, by index)."""
    from litdata import StreamingDataset

    try:
        return StreamingDataset(folder, batch_decode=0)  # one item decoded per read: reads are random, by index
    except (OSError, ValueError) as err:
        raise UserError(f"stream {folder}: not a readable litdata dataset ({err})") from None


class StreamTable:
    """The rows of a stream, read as a :class:`~multimodal.data.stream.ManifestTable` reads a manifest.

    Args:
        stream: the stream's folder or bucket prefix.
        required: columns the data needs; a stream of a manifest without one of them is a one-line error.

    Attributes:
        missing: the photos ``prepare`` did not find -> why, over the row blocks read so far in this process.
    """

    def __init__(self, stream: str, required: Sequence[str] = ()) -> None:
        self.path = stream
        header = read_header(stream)
        self.columns: list[str] = list(header["columns"])
        self.source = header["manifest"]
        missing = [c for c in dict.fromkeys(required) if c not in self.columns]
        if missing:
            raise UserError(
                f"stream {stream} was prepared from {self.source}, which has no column(s) {missing} that the data "
                f"config names; columns present: {self.columns}"
            )
        self.num_rows: int = int(header["rows"])
        self.block_rows: int = int(header["block_rows"])
        self.image_column: str = header["image_column"]
        self._plain = set(header["plain_columns"])
        self._source = SimpleNamespace(kind=header["kind"])  # what the splitting pass asks of a manifest's reader
        self.missing: dict[str, str] = {}
        self._reset()

    def _reset(self) -> None:
        self._rows: Any = None
        self._pid = os.getpid()
        self._blocks: OrderedDict[int, dict[str, list]] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_rows": None, "_blocks": OrderedDict()}  # a worker reopens the chunks

    @property
    def counted_rows(self) -> int:
        return self.num_rows

    def __len__(self) -> int:
        return self.num_rows

    def plain_columns(self) -> set[str]:
        """The columns that held only text, numbers and nulls in the manifest (their cells need no check)."""
        return set(self._plain)

    def _select(self, columns: Sequence[str] | None) -> list[str]:
        if columns is None:
            return list(self.columns)
        unknown = [c for c in columns if c not in self.columns]
        if unknown:
            raise UserError(f"stream {self.path} has no column(s) {unknown}; columns present: {self.columns}")
        return list(dict.fromkeys(columns))

    def column_chunks(
        self, start: int = 0, rows: int = 8192, columns: Sequence[str] | None = None
    ) -> Iterator[tuple[int, dict[str, list]]]:
        """The rows from ``start`` on, ``rows`` at a time, as dicts of column lists (as the manifest's)."""
        check_chunking(start, rows)
        names = self._select(columns)
        first = start
        while first < self.num_rows:
            stop = min(first + rows, self.num_rows)
            chunk: dict[str, list] = {c: [] for c in names}
            for block in range(first // self.block_rows, (stop - 1) // self.block_rows + 1):
                cells, at = self._block(block), block * self.block_rows
                lo, hi = max(first, at) - at, min(stop, at + self.block_rows) - at
                for c in names:
                    chunk[c].extend(cells[c][lo:hi])
            yield first, chunk
            first = stop

    def _block(self, block: int) -> dict[str, list]:
        if self._pid != os.getpid():  # a forked worker: litdata's reader is not shared across processes
            self._reset()
        if block in self._blocks:
            self._blocks.move_to_end(block)
            return self._blocks[block]
        if self._rows is None:
            self._rows = open_litdata(f"{self.path}/rows")
        item = self._rows[block]
        cells = json.loads(item["cells"])
        self.missing.update(json.loads(item["missing"]))
        self._blocks[block] = cells
        if len(self._blocks) > _BLOCKS_KEPT:
            self._blocks.popitem(last=False)
        return cells


class StreamPhotoReader(PhotoReader):
    """The splitting pass's view of a stream's photos: those ``prepare`` found missing are missing (for the same
    reason as in the manifest), every other one is there."""

    def __init__(self, table: StreamTable) -> None:
        super().__init__(None)
        self.table = table

    def local_path(self, photo: str) -> None:  # type: ignore[override]
        reason = self.table.missing.get(photo)
        if reason is not None:
            raise BadSampleError(reason)
        return None


class StoredPhotos:
    """Reads a row's photos from the stream's ``photos/`` dataset (opened in the process that reads)."""

    def __init__(self, folder: str) -> None:
        self.folder, self.row = folder, -1
        self._data: Any = None
        self._pid = -1

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_data": None}

    def prefetch(self, photos: list[Any]) -> None:
        """Nothing to fetch: the bytes are in the stream."""

    def forget(self) -> None:
        """Nothing was prefetched."""

    def read(self, photo: Any) -> Image.Image:
        """Photo ``photo`` of row :attr:`row` as an RGB image; :class:`BadSampleError` naming it when ``prepare``
        could not read it or its bytes are not an image."""
        if self._data is None or self._pid != os.getpid():
            self._data, self._pid = open_litdata(self.folder), os.getpid()
        item = self._data[self.row]
        offset = 0
        for name, size, reason in json.loads(item["index"]):
            if name == photo:
                if reason is not None:
                    raise BadSampleError(reason)
                return decode_photo(item["data"][offset : offset + size], f"{photo} (row {self.row} of the stream)")
            offset += max(size, 0)
        raise BadSampleError(f"photo '{photo}' is not in row {self.row} of the stream {self.folder}")


class StreamDataset(ProductDataset):
    """:class:`ProductDataset` over a stream's records: each photo is read from the stream's bytes of its row."""

    def __init__(self, records: Sequence[ProductRecord], *args: Any, **kwargs: Any) -> None:
        super().__init__(records, *args, **kwargs)
        table = records.lazy.table  # type: ignore[attr-defined]  # a RowSubset of the stream's rows
        self.photos = StoredPhotos(f"{table.path}/photos")  # type: ignore[assignment]

    def _photos(self, rec: ProductRecord) -> Any:
        self.photos.row = rec.row  # type: ignore[attr-defined]
        return super()._photos(rec)


def read_stream_splits(
    stream: str, photos: PhotoReader, columns: DataColumns, rule: SplitRule, bad: BadRow, bad_photo: BadRow | None
) -> tuple[SplitScan, dict[str, RowSubset]]:
    """:func:`multimodal.data.split_rows.read_splits` over a stream: the same pass, checks and records (``photos``,
    the manifest's reader, is not used: the stream holds the photos)."""
    table = StreamTable(stream, columns.required)
    scan = scan_splits(table, stream, StreamPhotoReader(table), columns, rule, bad, bad_photo)  # type: ignore[arg-type]
    read = list(dict.fromkeys(columns.required))
    lazy = LazyRows(table, TrainingRecord(columns, stream, scan.kept), table.block_rows, read)  # type: ignore[arg-type]
    return scan, {s: RowSubset(np.asarray(rows), lazy) for s, rows in scan.rows.items()}
