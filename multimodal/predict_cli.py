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
from typing import Any

from multimodal.arguments import Parser
from multimodal.errors import UserError

GENERATION_OPTIONS = (
    "num_beams", "max_new_tokens", "min_new_tokens", "temperature", "top_k", "top_p",
    "repetition_penalty", "no_repeat_ngram_size", "length_penalty",
)  # fmt: skip
TASK_OF_COMMAND = {
    "export": "multimodal.search.retriever.ProductRetriever",
    "caption": "multimodal.captioning.captioner.ProductCaptioner",
}
EPILOG = """The task of the checkpoint picks the output:
  tagger     --out predictions.jsonl (or .csv): id, label and score per attribute, tags with probabilities
  retriever  --out folder/: vector shards + products table for `multimodal index` (same as `multimodal export`)
  captioner  --out captions.jsonl (or .csv): id, image, caption, score (same as `multimodal caption`)
One output line per input row, in input order: an unreadable photo, an empty or a repeated id gives its row an
"error" field (a job whose every row fails exits with status 2). Re-running the same command after a kill
finishes the missing blocks only; an --out that is not this job's own output is refused, never touched.

  multimodal predict --ckpt_path runs/tagging/.../best.ckpt --data.manifest new.csv --out tags.jsonl --top_k 3"""


def parser(command: str = "predict") -> argparse.ArgumentParser:
    descriptions = {
        "predict": "Predict with any task's checkpoint: tags, product vectors or captions.",
        "export": "Export one L2-normalised vector per product (a retriever checkpoint) to resumable shards.",
        "caption": "Caption product photos in batches (a captioner checkpoint); JSONL out, resumable.",
    }
    p = Parser(
        prog=f"multimodal {command}",
        description=descriptions[command],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--ckpt_path", "--ckpt", required=True, help="checkpoint written by `multimodal fit` (or an ONNX export folder)"
    )
    p.add_argument(
        "--runtime",
        choices=("torch", "onnx", "onnx-int8"),
        default="torch",
        help="PyTorch eager (default) or ONNX Runtime fp32 / int8 on the CPU (taggers and retrievers; a checkpoint "
        "is exported once to the user cache; an export folder always runs on ONNX Runtime)",
    )
    p.add_argument(
        "--input",
        "--data.manifest",
        "--data.init_args.manifest",
        dest="input",
        help="manifest (.csv, .jsonl, .parquet) or folder of photos (default: the manifest of --config, else the "
        "training manifest named in the checkpoint)",
    )
    p.add_argument(
        "--image_root",
        "--data.image_root",
        "--data.init_args.image_root",
        dest="image_root",
        help="folder the manifest's relative image paths are relative to (default: the manifest's folder); "
        "absolute paths are read as they are",
    )
    p.add_argument(
        "--confine_images",
        "--data.confine_images",
        "--data.init_args.confine_images",
        dest="confine_images",
        action="store_true",
        help="refuse, row by row, image paths outside the image root (../, absolute paths elsewhere, symlinks out)",
    )
    p.add_argument("--config", help="a training config: its data section gives the default manifest and image root")
    p.add_argument("--out", required=True, help="output file (.jsonl / .csv) or, for vectors, folder")
    run = p.add_argument_group("running")
    run.add_argument("--batch_size", "--batch-size", "--data.batch_size", type=int, help="items per batch")
    run.add_argument(
        "--block_size",
        "--shard-size",
        "--shard_size",
        type=int,
        help="items per resumable block (an export's shard); default 1024 rows, 8192 vectors",
    )
    run.add_argument("--num_workers", "--num-workers", "--data.num_workers", type=int, help="decoding workers")
    run.add_argument("--accelerator", default="auto", help="cpu, gpu or auto")
    run.add_argument("--devices", default="1", help="devices / processes (e.g. 2 with --strategy ddp)")
    run.add_argument("--strategy", default="auto", help="Lightning strategy (ddp for several devices)")
    run.add_argument("--precision", default=None, help="Lightning precision, e.g. bf16-mixed (default: full)")
    run.add_argument("--limit_batches", "--limit-batches", type=int, help="stop after this many batches per rank")
    run.add_argument("--no_progress", "--no-progress", action="store_true", help="hide the progress bar")
    tags = p.add_argument_group("tagging")
    tags.add_argument("--top_k", type=int, default=None, help="also write the top-k labels per attribute (JSONL)")
    export = p.add_argument_group("vectors (retrieval)")
    export.add_argument(
        "--columns",
        nargs="*",
        default=None,
        help="manifest columns stored with the ids, for search --where and index --lexical (default: every column; "
        "--columns alone: none)",
    )
    export.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="stored precision")
    export.add_argument("--format", choices=("safetensors", "npy"), default="safetensors", help="shard format")
    cap = p.add_argument_group("captioning")
    cap.add_argument("--prompt", help="fixed prompt text before the caption (default: the trained one)")
    cap.add_argument("--do_sample", action="store_true", help="sample instead of greedy / beam search")
    for name in GENERATION_OPTIONS:
        kind = int if name in ("num_beams", "max_new_tokens", "min_new_tokens", "no_repeat_ngram_size") else float
        if name == "top_k":
            continue  # shared with tagging's --top_k: the task decides what it means
        cap.add_argument(f"--{name}", type=kind, help="Hugging Face generate option")
    cap.add_argument("--no_cache", action="store_true", help="generate without the KV cache (slower; same text)")
    cap.add_argument("--trim_vocabulary", metavar="{on,off}", help="logits for the training targets' token ids "
                     "only (faster; default on when the checkpoint holds them)")  # fmt: skip
    cap.add_argument("--rerank", metavar="{on,off}", help="consensus reranking: beam candidates, keep the one closest "
                     "in CIDEr-D to the titles of the most similar training photos (default: the checkpoint's "
                     "model.rerank; on needs a checkpoint with a caption memory)")  # fmt: skip
    cap.add_argument("--seed", type=int, default=0, help="sampling seed (same inputs and batch size: same captions)")
    return p


def main(argv: list[str], command: str = "predict") -> None:
    args = parser(command).parse_args(argv)
    summary = run(args, command, argv)
    if summary is not None:
        print(json.dumps(summary))


def export_main(argv: list[str]) -> None:
    main(argv, "export")


def caption_main(argv: list[str]) -> None:
    main(argv, "caption")


def _positive(args: argparse.Namespace) -> None:
    for name in ("batch_size", "block_size", "num_beams", "max_new_tokens", "top_k"):
        value = getattr(args, name, None)
        if value is not None and value <= 0:
            raise UserError(f"--{name} must be positive, not {value}")
    if args.num_workers is not None and args.num_workers < 0:
        raise UserError(f"--num_workers must be 0 or more, not {args.num_workers}")


def _config_data(path: str | None) -> dict[str, Any]:
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


def _tagging(args, loaded, source, image_root, options, relaunch):  # noqa: ANN001, ANN202
    from multimodal.tagging.predictor import Tagger
    from multimodal.writers import RowsSink, run_job

    tagger = Tagger(loaded)
    tagger.top_k = args.top_k or 1
    sink = RowsSink(args.out)
    if sink.out.suffix == ".csv" and tagger.top_k > 1:
        raise UserError("--top_k > 1 writes lists of [label, score]: use a .jsonl --out")
    dataset, _ = _inputs(tagger, source, args, image_root)
    spec = _spec(loaded, dataset, top_k=tagger.top_k, format=sink.out.suffix)
    summary = run_job(tagger.model, dataset, tagger.collate(), sink, spec, tagger.rows, options, relaunch)
    return _finish(summary, sink, source)


def _captions(args, loaded, source, image_root, options, relaunch):  # noqa: ANN001, ANN202
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
    captioner.configure(args.prompt, args.seed, **generation)
    sink = RowsSink(args.out)
    dataset, _ = _inputs(captioner, source, args, image_root)
    spec = _spec(loaded, dataset, prompt=args.prompt, seed=args.seed, generation=generation, format=sink.out.suffix)

    def image(record: Any) -> dict[str, Any]:
        return {"image": record.image if isinstance(record.image, str) else None}

    model, collate = captioner.model, captioner.collate()
    summary = run_job(model, dataset, collate, sink, spec, captioner.rows, options, relaunch, image)
    return _finish(summary, sink, source)


def _vectors(args, loaded, source, image_root, options, relaunch):  # noqa: ANN001, ANN202
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
