"""What the batch jobs of every task share (:mod:`multimodal.predict_cli`): the input rows of a manifest or a
folder of photos, the job's identity for resuming, and the summary of a rows job."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from multimodal.errors import UserError


def job_inputs(
    predictor: Any, source: Path, args: argparse.Namespace, image_root: Path | None, extra: list[str] | None = None
) -> tuple[Any, Any]:
    """(dataset of every input row, the manifest as text cells or None for a folder) of a manifest or a folder of
    photos; ``extra`` columns must be in the manifest too (read once with the rest). Image paths are relative to
    ``image_root`` (default: the manifest's folder) or absolute, confined to the root with --confine_images."""
    from multimodal.data.inputs import folder_records, frame_records
    from multimodal.data.manifest import read_manifest

    if source.is_dir():
        return predictor.dataset(folder_records(source, predictor.columns), source, args.confine_images), None
    if not source.is_file():
        raise UserError(f"input {source}: no such manifest or folder")
    required = [predictor.columns.id, *predictor.required_columns()]
    df = read_manifest(source, [*required, *(extra or [])])
    records, _ = frame_records(df, str(source), predictor.columns, required, predictor.require_image)
    return predictor.dataset(records, image_root or source.parent, args.confine_images), df


def job_spec(loaded: Any, dataset: Any, **options: Any) -> dict[str, Any]:
    """The job's identity (:mod:`multimodal.job_state`): task, checkpoint and ids hashes, runtime, image root and
    the options that change its output."""
    from multimodal.search.export import ids_sha256

    ids = [r.id for r in dataset.records]
    root = str(Path(dataset.image_root).resolve()) if dataset.image_root is not None else None
    spec = {"task": loaded.task, "checkpoint_sha256": loaded.sha256(), "ids_sha256": ids_sha256(ids)}
    if loaded.runtime != "torch":  # int8 outputs differ from eager: a job is resumed on the runtime it began on
        spec["runtime"] = loaded.runtime
    if dataset.confine_images:  # recorded only when on: jobs begun before the option resume as they were
        spec["confine_images"] = True
    return {**spec, "image_root": root, **options}


def finish_rows(summary: dict[str, Any] | None, sink: Any, source: Path) -> dict[str, Any] | None:
    """The summary of a rows job; a finished job in which every row failed is an error (exit 2), as an export
    whose every product was skipped: the output is written, but nothing in it is a prediction."""
    if summary is not None and summary.get("complete") and summary["rows"] and summary["errors"] == summary["rows"]:
        raise UserError(
            f"every row of {source} failed ({summary['rows']}; first: {sink.first_error}): is --image_root right? "
            f"The rows and their errors are in {sink.out}"
        )
    return summary
