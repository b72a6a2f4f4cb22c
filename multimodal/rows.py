"""Rows of a batch job: a batch's prediction shaped into positioned rows, and the one JSONL or CSV file that a
job's blocks of rows are joined into (:class:`RowsSink`)."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from multimodal.errors import UserError
from multimodal.job_state import Blocks, Row, close_job


def positioned_rows(
    prediction: dict[str, Any],
    positions: list[int],
    skipped: list[dict[str, Any]],
    to_rows: Callable[..., list[Row]],
    skipped_photos: dict[int, list[dict[str, str]]] | None = None,
) -> list[tuple[int, Row]]:
    """``(input position, row)`` of one batch: a row per predicted id (``to_rows``), with the ``skipped_photos``
    of a product predicted from only some of its photos, and an error row per item that could not be read. The
    batch jobs and the Python API both build their rows here."""
    rows = to_rows(prediction) if prediction["ids"] else []
    photos = skipped_photos or {}
    out = [
        (p, {**row, "skipped_photos": photos[p]} if p in photos else row)
        for p, row in zip(positions, rows, strict=True)
    ]
    return out + [(s["position"], {"id": s["id"], "error": s["reason"]}) for s in skipped]


def block_rows(
    rows: list[tuple[int, Row]], records: Any, record_fields: Callable[[Any], Row] | None = None
) -> list[Row]:
    """One block's rows as a sink stores them: in input order, ``id`` first, then ``record_fields`` of the input
    record (e.g. the image path), then the prediction."""
    out = []
    for position, row in sorted(rows, key=lambda pr: pr[0]):
        extra = record_fields(records[position]) if record_fields is not None else {}
        out.append({"id": row["id"], **extra, **row})
    return out


class RowsSink:
    """One JSONL or CSV file of rows (``id`` first). Blocks are JSONL files in the hidden sibling folder
    ``.<name>.job/``; finalize joins them into a temporary sibling of ``out`` and renames it into place."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        if self.out.is_dir():
            raise UserError(f"--out {self.out} is a folder; give a .jsonl or .csv file")
        if self.out.suffix not in (".jsonl", ".csv"):
            raise UserError(f"--out must end in .jsonl or .csv, not '{self.out.name}'")
        self.folder = self.out.parent / f".{self.out.name}.job"
        self.output = self.out
        self.first_error: str | None = None  # of the finished output (named when every row failed)

    def describe(self) -> str:
        return str(self.out)

    def occupied(self) -> bool:
        return self.out.exists()

    def exists(self) -> bool:
        return self.out.is_file()

    def _block(self, block: int) -> Path:
        return self.folder / f"block-{block:06d}.jsonl"

    def block_done(self, block: int) -> bool:
        return self._block(block).is_file()

    def write_block(self, block: int, rows: list[Row]) -> None:
        path = self._block(block)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def rows(self, blocks: Blocks) -> Any:
        for block in range(blocks.count):
            with open(self._block(block), encoding="utf-8") as f:
                for line in f:
                    yield json.loads(line)

    def finalize(self, blocks: Blocks, spec: dict[str, Any]) -> dict[str, Any]:
        missing = [b for b in range(blocks.count) if not self.block_done(b)]
        if missing:
            raise UserError(f"{self.out}: blocks {missing[:10]} were not written; re-run the same command to finish")
        tmp = self.out.with_name(f".{self.out.name}.{os.getpid()}.tmp")
        counts = {"rows": 0, "errors": 0}
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            if self.out.suffix == ".jsonl":
                for row in self.rows(blocks):
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                    self._count(counts, row)
            else:
                fields = list(dict.fromkeys(k for row in self.rows(blocks) for k in row))
                writer = csv.DictWriter(f, fieldnames=fields)
                writer.writeheader()
                for row in self.rows(blocks):
                    writer.writerow({k: _cell(v) for k, v in row.items()})
                    self._count(counts, row)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.out)
        close_job(self, spec, blocks)
        for block in range(blocks.count):
            self._block(block).unlink(missing_ok=True)
        for tmp in self.folder.glob(".block-*.tmp"):  # a block a killed worker was writing (written again since)
            tmp.unlink(missing_ok=True)
        return {"out": str(self.out), **counts}

    def incomplete(self, blocks: Blocks, spec: dict[str, Any], missing: list[int]) -> None:
        pass  # the blocks written so far stay in the job folder until a re-run completes the output

    def _count(self, counts: dict[str, int], row: Row) -> None:
        counts["rows"] += 1
        if "error" in row:
            counts["errors"] += 1
            self.first_error = self.first_error or f"row {counts['rows'] - 1} (id {row['id']}): {row['error']}"


def _cell(value: Any) -> Any:
    if isinstance(value, list):
        return "|".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    return value
