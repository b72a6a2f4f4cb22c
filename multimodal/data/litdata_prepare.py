"""Writing a stream (:mod:`multimodal.data.litdata_stream`): a manifest and its photos as litdata chunks.

litdata's ``optimize`` writes both datasets (``rows/``, one item per block of rows; ``photos/``, one item per row)
with its workers, in row order (``keep_data_ordered``), to a local folder or a bucket prefix it can write to
(``s3://``, ``gs://``, ...). A local stream is built in a hidden sibling folder and renamed into place when complete;
in a bucket the header is written last, so a stream without its header is never read. An output that already holds
something is refused and left untouched.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec

from multimodal.data.fetch import FetchOptions, is_remote
from multimodal.data.litdata_stream import FORMAT, HEADER, VERSION
from multimodal.data.photo_reader import PhotoReader
from multimodal.data.photos import photo_list
from multimodal.data.split_checks import PhotoCheck
from multimodal.data.stream import ManifestTable
from multimodal.data.stream_records import cell_failures
from multimodal.errors import BadSampleError, UserError

BLOCK_ROWS = 256  # rows per item of rows/: a random read decodes one block of JSON, a scan reads few items


def _plain(value: Any) -> Any:
    """A cell JSON cannot hold, as the data module would read it: bytes as UTF-8 text, NumPy values as Python's."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


class _Blocks:
    """Reads block ``k`` of a manifest (rows ``k*B`` to ``(k+1)*B``) for litdata's workers (it pickles).

    A worker that raises leaves litdata's ``optimize`` waiting for it forever: any error of a block is written to
    ``failures`` (a local folder) instead, and :func:`prepare` raises the first one after the pass.
    """

    def __init__(self, manifest: str, image_column: str, reader: PhotoReader, block_rows: int, failures: str) -> None:
        self.manifest, self.image_column, self.reader, self.block_rows = manifest, image_column, reader, block_rows
        self.failures = failures
        self.table = ManifestTable(manifest, [image_column])

    def __call__(self, block: int) -> Iterator[dict[str, Any]]:
        try:
            yield from self.items(block)
        except Exception as err:  # noqa: BLE001 - any error: reported by prepare, never raised in a worker
            message = str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
            Path(self.failures, f"{block:09d}.txt").write_text(" ".join(message.split()))

    def items(self, block: int) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def cells(self, block: int) -> tuple[int, dict[str, list]]:
        return next(self.table.column_chunks(block * self.block_rows, self.block_rows))

    def photos(self, row: int, cell: Any) -> list[str]:
        return [str(p) for p in photo_list(cell, f"{self.manifest} row {row}, column '{self.image_column}'")]


class RowBlocks(_Blocks):
    """``block -> the rows/ item``: the block's cells as JSON and its photos missing as the manifest reads them."""

    def items(self, block: int) -> Iterator[dict[str, Any]]:
        first, cells = self.cells(block)
        check = PhotoCheck(self.reader, self.manifest, None)
        missing = {}
        for row, cell in enumerate(cells[self.image_column], start=first):
            for photo in self.photos(row, cell):
                reason = check.missing(photo)
                if reason is not None:
                    missing[photo] = reason
        yield {"cells": json.dumps(cells, default=_plain), "missing": json.dumps(missing)}


class PhotoBlocks(_Blocks):
    """``block -> one photos/ item per row``: the bytes of each photo found, or why it could not be read."""

    def items(self, block: int) -> Iterator[dict[str, Any]]:
        first, cells = self.cells(block)
        check = PhotoCheck(self.reader, self.manifest, None)
        for row, cell in enumerate(cells[self.image_column], start=first):
            index, data = [], io.BytesIO()
            for photo in self.photos(row, cell):
                reason = check.missing(photo)
                try:
                    payload = self._read(photo) if reason is None else b""
                except BadSampleError as err:
                    reason = str(err)
                index.append([photo, -1 if reason else len(payload), reason])
                data.write(b"" if reason else payload)
            yield {"index": json.dumps(index), "data": data.getvalue()}

    def _read(self, photo: str) -> bytes:
        path = self.reader.local_path(photo)
        if path is None:  # a URL: fetched now, with the data's fetch options (a failure is read as such later)
            url = self.reader.url(photo)
            assert url is not None
            return self.reader.fetcher().fetch(url)
        try:
            return path.read_bytes()
        except OSError as err:
            raise BadSampleError(f"unreadable image {path}: {err}") from None


def check_output(out: str) -> None:
    """Refuse an output that holds anything (a stream is written into a new or empty folder or prefix)."""
    fs, root = fsspec.core.url_to_fs(out)
    if fs.exists(root) and (not fs.isdir(root) or fs.ls(root)):
        raise UserError(f"--out {out} already holds files; `multimodal prepare` writes into a new or empty folder")


def prepare(
    manifest: str,
    out: str,
    image_root: str | None = None,
    image_column: str = "image",
    confine_images: bool = False,
    fetch: FetchOptions | None = None,
    num_workers: int = 1,
    chunk_bytes: str = "64MB",
) -> dict[str, Any]:
    """Write ``manifest`` (every column, every row) and its photos as a stream at ``out``.

    Args:
        manifest: CSV, JSONL or Parquet file or Parquet folder, local or any fsspec URL.
        out: a new or empty local folder, or a bucket prefix litdata writes to.
        image_root: where relative photo paths point (default: the manifest's folder), as for training.
        image_column: the column of the photos.
        confine_images: refuse photos outside ``image_root`` (recorded as unreadable, as training does).
        fetch: how photo URLs are fetched.
        num_workers: litdata writer processes.
        chunk_bytes: litdata chunk size.

    Returns:
        The header written (with ``stream``: where).
    """
    from multimodal.data.photo_reader import image_root as photo_root
    from multimodal.data.split_rows import manifest_folder, manifest_path

    table = ManifestTable(manifest, [image_column])
    failures = cell_failures(table, [], image_column)
    if failures:
        raise UserError(f"manifest {manifest} {failures[image_column]}")
    if table.num_rows == 0:
        raise UserError(f"manifest {manifest} is empty")
    check_output(out)
    reader = PhotoReader(photo_root(image_root) or manifest_folder(manifest_path(manifest)), confine_images, fetch)
    header = {"format": FORMAT, "version": VERSION, "manifest": str(manifest), "kind": getattr(table._source, "kind",
              None), "columns": table.columns, "plain_columns": sorted(table.plain_columns()), "rows": table.num_rows,
              "block_rows": BLOCK_ROWS, "image_column": image_column}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="prepare-failures-") as failures:
        parts = {"rows": RowBlocks(manifest, image_column, reader, BLOCK_ROWS, failures),
                 "photos": PhotoBlocks(manifest, image_column, reader, BLOCK_ROWS, failures)}  # fmt: skip
        _write(out, header, parts, -(-table.num_rows // BLOCK_ROWS), num_workers, chunk_bytes)
    return {"stream": out, **header}


def _write(
    out: str, header: dict[str, Any], parts: dict[str, Any], blocks: int, num_workers: int, chunk_bytes: str
) -> None:
    """Write each part (folder name -> its ``block -> items`` function) and then the header: locally into a hidden
    sibling renamed into place at the end (removed if anything fails), into a bucket prefix directly."""
    target = None if is_remote(out) else Path(out).parent / f".{Path(out).name}.partial-{os.getpid()}"
    where = str(target) if target is not None else out.rstrip("/")
    try:
        for name, fn in parts.items():
            _optimize(fn, list(range(blocks)), f"{where}/{name}", num_workers, chunk_bytes)
            failed = sorted(Path(fn.failures).iterdir())
            if failed:
                raise UserError(f"manifest {fn.manifest}: {failed[0].read_text()} (no stream written to {out})")
        with fsspec.open(f"{where}/{HEADER}", "w") as f:
            json.dump(header, f, indent=2)
        if target is not None:
            with contextlib.suppress(FileNotFoundError):
                Path(out).rmdir()  # an empty folder given as --out
            target.rename(out)
    finally:
        if target is not None and target.exists():
            shutil.rmtree(target)


def _optimize(fn: Any, blocks: list[int], output_dir: str, num_workers: int, chunk_bytes: str) -> None:
    """litdata's ``optimize`` in row order; its progress text is kept off the command's output."""
    from litdata import optimize

    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        optimize(fn, blocks, output_dir=output_dir, chunk_bytes=chunk_bytes, num_workers=num_workers,
                 keep_data_ordered=True, reorder_files=False, start_method="fork", verbose=False)  # fmt: skip
