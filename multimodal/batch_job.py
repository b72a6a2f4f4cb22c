"""What the batch jobs of every task share (:mod:`multimodal.predict_cli`): the request a job is given, the input
rows of a manifest or a folder of photos, the job's identity for resuming, and the summary of a rows job."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from multimodal.errors import UserError

if TYPE_CHECKING:
    from multimodal.artefact import Loaded
    from multimodal.job_state import Row, Sink
    from multimodal.writers import JobOptions


@dataclass(frozen=True)
class Job:
    """One batch job, as ``multimodal predict`` (``export``, ``caption``) hands it to a task's ``job``
    (:class:`multimodal.task.Task`): ``job(request) -> summary``.

    Attributes:
        args: the command's options (``--out``, ``--top_k``...; the task reads its own).
        loaded: the checkpoint or export, loaded.
        source: the input manifest or folder of photos.
        image_root: where relative image paths start (None: the manifest's folder).
        options: how the job runs (batch and block sizes, devices, progress).
        relaunch: the command line that Lightning's DDP launcher re-runs in the other processes.
        executor: runs the job's blocks instead of Lightning's ``trainer.predict`` (:mod:`multimodal.ray_job`):
            called as ``run`` is, with the job first.
    """

    args: argparse.Namespace
    loaded: Loaded
    source: Path | str  # a local path, or a URL (a bucket, a CDN)
    image_root: Path | str | None
    options: JobOptions
    relaunch: list[str]
    executor: Callable[..., dict[str, Any] | None] | None = None

    def inputs(self, predictor: Any, extra: list[str] | None = None) -> tuple[Any, Any]:
        """:func:`job_inputs` of this job's source for ``predictor``."""
        return job_inputs(predictor, self.source, self.args, self.image_root, extra)

    def spec(self, dataset: Any, **options: Any) -> dict[str, Any]:
        """:func:`job_spec`: the job's identity, with the options that change its output."""
        return job_spec(self.loaded, dataset, **options)

    def run(
        self,
        predictor: Any,
        dataset: Any,
        sink: Sink,
        spec: dict[str, Any],
        record_fields: Callable[[Any], Row] | None = None,
    ) -> dict[str, Any] | None:
        """Predict every unfinished block of ``dataset`` with ``predictor``'s model, its collate and rows
        (:func:`multimodal.writers.run_job`, or the job's ``executor``); the summary on rank 0."""
        from multimodal.writers import run_job

        if self.executor is not None:
            return self.executor(self, predictor, dataset, sink, spec, record_fields)

        collate = predictor.collate()
        rows = predictor.rows
        return run_job(predictor.model, dataset, collate, sink, spec, rows, self.options, self.relaunch, record_fields)


def job_inputs(
    predictor: Any,
    source: Path | str,
    args: argparse.Namespace,
    image_root: Path | str | None,
    extra: list[str] | None = None,
) -> tuple[Any, Any]:
    """(dataset of every input row, the manifest's :class:`multimodal.data.stream.ManifestTable` or None for a folder
    of photos) of a manifest file, a Parquet dataset folder or a folder of photos; ``extra`` columns must be in the
    manifest too. The manifest is streamed: the dataset holds the ids' hashes and decodes a chunk of rows when asked
    (:class:`multimodal.data.stream_records.ManifestRecords`), so memory does not grow with the catalogue. Image
    paths are relative to ``image_root`` (default: the folder holding the manifest) or absolute, confined to the root
    with --confine_images."""
    from multimodal.data.inputs import folder_records
    from multimodal.data.split_rows import manifest_folder
    from multimodal.predict_args import fetch_options

    fetch = fetch_options(args)
    if isinstance(source, Path) and is_photo_folder(source):
        return predictor.dataset(folder_records(source, predictor.columns), source, args.confine_images, fetch), None
    if isinstance(source, Path) and not source.exists():
        raise UserError(f"input {source}: no such manifest or folder")
    table, records = manifest_records(predictor, source, extra)
    return predictor.dataset(records, image_root or manifest_folder(source), args.confine_images, fetch), table


def is_photo_folder(source: Path) -> bool:
    """A folder of photos (not a Parquet dataset: a folder holding ``.parquet`` files)."""
    return source.is_dir() and next(source.rglob("*.parquet"), None) is None


def manifest_records(predictor: Any, source: Path | str, extra: list[str] | None = None) -> tuple[Any, Any]:
    """The opened manifest and the lazy records of its rows, after refusing a bad cell as reading it whole would."""
    from multimodal.data.stream import ManifestTable
    from multimodal.data.stream_records import ManifestRecords, check_cells

    cols = predictor.columns
    required = [cols.id, *predictor.required_columns()]
    table = ManifestTable(str(source), [*required, *(extra or [])])
    if table.num_rows == 0:
        raise UserError(f"manifest {source} is empty")
    check_cells(table, str(source), [*required, *(extra or [])], [cols.id, *cols.texts, *cols.attributes, *cols.tags],
                cols.image)  # fmt: skip
    return table, ManifestRecords(table, cols, str(source), predictor.require_image)


def job_spec(loaded: Any, dataset: Any, **options: Any) -> dict[str, Any]:
    """The job's identity (:mod:`multimodal.job_state`): task, checkpoint and ids hashes, runtime, image root and
    the options that change its output."""
    from multimodal.data.stream_records import ManifestRecords
    from multimodal.search.export import ids_sha256

    records = dataset.records
    ids = records.ids_sha256 if isinstance(records, ManifestRecords) else ids_sha256([r.id for r in records])
    root = located(dataset.image_root) if dataset.image_root is not None else None
    spec = {"task": loaded.task, "checkpoint_sha256": loaded.sha256(), "ids_sha256": ids}
    if loaded.runtime != "torch":  # int8 outputs differ from eager: a job is resumed on the runtime it began on
        spec["runtime"] = loaded.runtime
    if dataset.confine_images:  # recorded only when on: jobs begun before the option resume as they were
        spec["confine_images"] = True
    return {**spec, "image_root": root, **options}


def located(path: Path | str) -> str:
    """A local path made absolute, a URL as it is: how a job records where its input is."""
    return str(path.resolve()) if isinstance(path, Path) else path


def finish_rows(summary: dict[str, Any] | None, sink: Any, source: Path | str) -> dict[str, Any] | None:
    """The summary of a rows job; a finished job in which every row failed is an error (exit 2), as an export
    whose every product was skipped: the output is written, but nothing in it is a prediction."""
    if summary is not None and summary.get("complete") and summary["rows"] and summary["errors"] == summary["rows"]:
        raise UserError(
            f"every row of {source} failed ({summary['rows']}; first: {sink.first_error}): is --image_root right? "
            f"The rows and their errors are in {sink.out}"
        )
    return summary
