"""``multimodal predict`` (any task), ``multimodal export`` (retrieval) and ``multimodal caption`` (captioning).

One command for the three batch jobs: the checkpoint alone rebuilds the model (no config, no training data),
the input is a manifest or a folder of photos, and the job runs through :func:`multimodal.writers.run_job`
(``trainer.predict``, one writer: resumable, DDP-aware, input order kept, per-row errors). The task of the
checkpoint picks the output: tags (JSONL / CSV rows), product vectors (an export folder) or captions (JSONL / CSV).
This module imports nothing heavy until a job runs, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from multimodal.errors import UserError
from multimodal.predict_args import GENERATION_OPTIONS, parser

if TYPE_CHECKING:
    from multimodal.writers import JobOptions

TASK_OF_COMMAND = {
    "export": "multimodal.search.retriever.ProductRetriever",
    "caption": "multimodal.captioning.captioner.ProductCaptioner",
}


def main(argv: list[str], command: str = "predict") -> None:
    """Run one batch command; prints the job's summary as one JSON line on rank 0."""
    args = parser(command).parse_args(argv)
    summary = run(args, command, argv)
    if summary is not None:
        print(json.dumps(summary))


def export_main(argv: list[str]) -> None:
    """``multimodal export``: ``predict`` that accepts retriever checkpoints only."""
    main(argv, "export")


def caption_main(argv: list[str]) -> None:
    """``multimodal caption``: ``predict`` that accepts captioner checkpoints only."""
    main(argv, "caption")


def _positive(args: argparse.Namespace) -> None:
    """One-line errors for counts that must be positive (or, for workers, not negative)."""
    for name in ("batch_size", "block_size", "num_beams", "max_new_tokens", "top_k"):
        value = getattr(args, name, None)
        if value is not None and value <= 0:
            raise UserError(f"--{name} must be positive, not {value}")
    if args.num_workers is not None and args.num_workers < 0:
        raise UserError(f"--num_workers must be 0 or more, not {args.num_workers}")


def _config_data(path: str | None) -> dict[str, Any]:
    """The ``data.init_args`` of a training config (empty without one)."""
    if path is None:
        return {}
    import yaml

    try:
        config = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"--config {path} could not be read: {err}") from None
    return dict(((config.get("data") or {}).get("init_args")) or {})


def run(args: argparse.Namespace, command: str, argv: list[str]) -> dict[str, Any] | None:
    """Load the checkpoint, read the input, run the task's job; the summary on rank 0."""
    _positive(args)
    from multimodal.loading import load

    wanted = TASK_OF_COMMAND.get(command)
    loaded = load(args.ckpt_path, task=wanted, runtime=args.runtime)
    onnx = loaded.runtime != "torch"
    if onnx and str(args.devices) not in ("1", "auto"):
        raise UserError("--runtime onnx runs in one process on the CPU: drop --devices / --strategy")
    defaults = {**loaded.data, **_config_data(args.config)}
    source = args.input or defaults.get("manifest")
    if source is None:
        raise UserError("give the input with --data.manifest (a manifest or a folder of photos)")
    source = Path(source)
    if args.input is None and not source.exists():
        raise UserError(f"the checkpoint's training manifest {source} is not here: give --data.manifest")
    image_root = args.image_root or (defaults.get("image_root") if args.input is None else None)
    # The training data's own rule follows its catalogue; a new catalogue is confined only when asked.
    args.confine_images = args.confine_images or (args.input is None and bool(defaults.get("confine_images")))
    from multimodal.writers import JobOptions

    options = JobOptions(
        batch_size=args.batch_size or int(defaults.get("batch_size") or 32),
        block_size=args.block_size or (8192 if loaded.task == "ProductRetriever" else 1024),
        num_workers=args.num_workers if args.num_workers is not None else 0,
        accelerator="cpu" if onnx else args.accelerator,
        devices=int(args.devices) if str(args.devices).isdigit() else args.devices,
        strategy=args.strategy,
        precision=args.precision,
        progress=not args.no_progress,
        limit_batches=args.limit_batches,
    )
    job = {"ProductTagger": _tagging, "ProductRetriever": _vectors, "ProductCaptioner": _captions}.get(loaded.task)
    if job is None:
        raise UserError(f"{args.ckpt_path} holds a {loaded.task}, which `multimodal predict` does not know")
    return job(args, loaded, source, Path(image_root) if image_root else None, options, [command, *argv])


def _inputs(
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


def _spec(loaded: Any, dataset: Any, **options: Any) -> dict[str, Any]:
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


def _finish(summary: dict[str, Any] | None, sink: Any, source: Path) -> dict[str, Any] | None:
    """The summary of a rows job; a finished job in which every row failed is an error (exit 2), as an export
    whose every product was skipped: the output is written, but nothing in it is a prediction."""
    if summary is not None and summary.get("complete") and summary["rows"] and summary["errors"] == summary["rows"]:
        raise UserError(
            f"every row of {source} failed ({summary['rows']}; first: {sink.first_error}): is --image_root right? "
            f"The rows and their errors are in {sink.out}"
        )
    return summary


def _tagging(
    args: argparse.Namespace,
    loaded: Any,
    source: Path,
    image_root: Path | None,
    options: JobOptions,
    relaunch: list[str],
) -> dict[str, Any] | None:
    """A tagger's job: one row of labels and scores per input row."""
    from multimodal.tagging.predictor import Tagger
    from multimodal.writers import RowsSink, run_job

    tagger = Tagger(loaded).with_top_k(args.top_k or 1)
    sink = RowsSink(args.out)
    if sink.out.suffix == ".csv" and tagger.top_k > 1:
        raise UserError("--top_k > 1 writes lists of [label, score]: use a .jsonl --out")
    dataset, _ = _inputs(tagger, source, args, image_root)
    spec = _spec(loaded, dataset, top_k=tagger.top_k, format=sink.out.suffix)
    summary = run_job(tagger.model, dataset, tagger.collate(), sink, spec, tagger.rows, options, relaunch)
    return _finish(summary, sink, source)


def _captions(
    args: argparse.Namespace,
    loaded: Any,
    source: Path,
    image_root: Path | None,
    options: JobOptions,
    relaunch: list[str],
) -> dict[str, Any] | None:
    """A captioner's job: one row with the caption of each input row's photo."""
    from multimodal.captioning.predictor import Captioner
    from multimodal.writers import RowsSink, run_job

    captioner = Captioner(loaded)
    generation = {k: getattr(args, k) for k in GENERATION_OPTIONS if getattr(args, k, None) is not None}
    if args.top_k is not None:
        generation["top_k"] = args.top_k
    if args.do_sample:
        generation["do_sample"] = True
    if args.no_cache:
        generation["use_cache"] = False
    if args.trim_vocabulary not in (None, "on", "off"):
        raise UserError(f"--trim_vocabulary must be on or off, not '{args.trim_vocabulary}'")
    if args.trim_vocabulary is not None:
        generation["trim_vocabulary"] = args.trim_vocabulary == "on"
    if args.rerank not in (None, "on", "off"):
        raise UserError(f"--rerank must be on or off, not '{args.rerank}'")
    if args.rerank is not None:
        generation["rerank"] = args.rerank == "on"
    captioner = captioner.with_options(args.prompt, args.seed, **generation)
    sink = RowsSink(args.out)
    dataset, _ = _inputs(captioner, source, args, image_root)
    spec = _spec(loaded, dataset, prompt=args.prompt, seed=args.seed, generation=generation, format=sink.out.suffix)

    def image(record: Any) -> dict[str, Any]:
        return {"image": record.image if isinstance(record.image, str) else None}

    model, collate = captioner.model, captioner.collate()
    summary = run_job(model, dataset, collate, sink, spec, captioner.rows, options, relaunch, image)
    return _finish(summary, sink, source)


def _vectors(
    args: argparse.Namespace,
    loaded: Any,
    source: Path,
    image_root: Path | None,
    options: JobOptions,
    relaunch: list[str],
) -> dict[str, Any] | None:
    """A retriever's job: an export folder of product vectors and their products table."""
    from multimodal.search import export
    from multimodal.search.predictor import Retriever
    from multimodal.writers import run_job

    retriever, cols = Retriever(loaded), loaded.columns
    dataset, df = _inputs(retriever, source, args, image_root, args.columns)
    if df is not None:
        df, columns, dropped = export.metadata_columns(df, cols.id, cols.image, args.columns, str(source))
        for reason in dropped:
            print(f"not stored (give --columns to choose): {reason}", file=sys.stderr)
        ids = {r.id for r in dataset.records if r.error is None}
        metadata = export.product_metadata(df, ids, cols.id, cols.image, columns)
    else:  # a folder of photos: no columns to store
        columns = list(args.columns) if args.columns is not None else list(cols.texts)
        metadata = {r.id: {"image_path": r.image} for r in dataset.records}
    model = retriever.model
    spec = _spec(
        loaded,
        dataset,
        model=type(model).__name__,
        product=model.product,
        dim=model.embed_dim,
        dtype=args.dtype,
        format=args.format,
        normalisation="l2",
        columns=columns,
        data_manifest=str(source.resolve()),
        image_root=str((image_root or (source if source.is_dir() else source.parent)).resolve()),
    )
    sink = export.ShardSink(Path(args.out), args.format, args.dtype, metadata, loaded.checkpoint_file())
    summary = run_job(model, dataset, retriever.collate(), sink, spec, retriever.rows, options, relaunch)
    return export.summarise(summary, source, args.out)
