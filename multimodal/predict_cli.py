"""``multimodal predict`` (any task), ``multimodal export`` (retrieval) and ``multimodal caption`` (captioning).

One command for the three batch jobs: the checkpoint alone rebuilds the model (no config, no training data),
the input is a manifest or a folder of photos, and the job runs through :func:`multimodal.writers.run_job`
(``trainer.predict``, one writer: resumable, DDP-aware, input order kept, per-row errors). The task of the
checkpoint picks the output: tags (JSONL / CSV rows), product vectors (an export folder) or captions (JSONL / CSV),
by the batch job its task declares (:mod:`multimodal.task`).
This module imports nothing heavy until a job runs, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from multimodal.errors import UserError
from multimodal.predict_args import parser


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
    """Load the checkpoint, read the input, run the task's job (on Lightning, or on Ray with ``--engine ray``);
    the summary on rank 0."""
    from multimodal.lite import wanted

    if wanted(args.ckpt_path):  # an ONNX export where torch cannot be imported: a plain loop, no Lightning
        from multimodal.lite.jobs import run as run_lite

        return run_lite(args, command, argv)
    executor = None
    if args.engine == "ray":
        from multimodal.ray_job import driver

        executor = driver(args, command, argv)
    from multimodal.task import resolve

    task, job = build(args, command, argv, executor)
    return resolve(task.job)(job)


def build(args: argparse.Namespace, command: str, argv: list[str], executor: Any = None) -> tuple[Any, Any]:
    """The task of the checkpoint and the :class:`multimodal.batch_job.Job` the command describes."""
    _positive(args)
    from multimodal.loading import load
    from multimodal.task import task_of, task_of_command

    reserved = task_of_command(command)  # export and caption take their own task's checkpoints alone
    loaded = load(args.ckpt_path, task=reserved.model if reserved else None, runtime=args.runtime)
    task = task_of(loaded.task)
    if task is None:
        raise UserError(f"{args.ckpt_path} holds a {loaded.task}, which `multimodal predict` does not know")
    onnx = loaded.runtime != "torch"
    if onnx and str(args.devices) not in ("1", "auto"):
        raise UserError("--runtime onnx runs in one process on the CPU: drop --devices / --strategy")
    defaults = {**loaded.data, **_config_data(args.config)}
    source = args.input or defaults.get("manifest")
    if source is None:
        raise UserError("give the input with --data.manifest (a manifest or a folder of photos)")
    from multimodal.data.split_rows import manifest_path

    source = manifest_path(source)  # a URL stays text
    if args.input is None and isinstance(source, Path) and not source.exists():
        raise UserError(f"the checkpoint's training manifest {source} is not here: give --data.manifest")
    image_root = args.image_root or (defaults.get("image_root") if args.input is None else None)
    # The training data's own rule follows its catalogue; a new catalogue is confined only when asked.
    args.confine_images = args.confine_images or (args.input is None and bool(defaults.get("confine_images")))
    from multimodal.writers import JobOptions

    options = JobOptions(
        batch_size=args.batch_size or int(defaults.get("batch_size") or 32),
        block_size=args.block_size or task.block_size,
        num_workers=args.num_workers if args.num_workers is not None else 0,
        accelerator="cpu" if onnx else args.accelerator,
        devices=int(args.devices) if str(args.devices).isdigit() else args.devices,
        strategy=args.strategy,
        precision=args.precision,
        progress=not args.no_progress,
        limit_batches=args.limit_batches,
    )
    from multimodal.batch_job import Job
    from multimodal.data.photo_reader import image_root as photo_root

    root = photo_root(image_root)
    return task, Job(args, loaded, source, root, options, [command, *argv], executor)
