"""``--engine ray``: a batch job's blocks predicted by a pool of Ray actors, the job itself unchanged.

``multimodal predict`` / ``export`` / ``caption`` with ``--engine ray`` run the same job as on Lightning
(:func:`multimodal.writers.run_job`): the input cut into the same fixed blocks, the same job record and lock, the
same sinks, the same output file or export folder. The driver (the command's own process) takes the output's
lock, records the job and hands the numbers of the unfinished blocks to a Ray Data ``map_batches`` step. Each
actor of its pool builds the job once from the same command line (the checkpoint through the one loader, eager or
ONNX Runtime; the manifest; the sink), then predicts whole blocks and writes each one atomically.

Exactly once, in input order:

- an actor killed mid-block: Ray restarts it and retries the block, which is written again to the same file (a
  block file is renamed into place whole, so a half-written block is never seen);
- the driver killed: the same command again resumes the job, skipping the blocks already written;
- the driver joins the blocks in block order when all are written: every input row once, in input order, as the
  Lightning engine writes it.

On a cluster (``--ray_address``) every node must have this package installed and reach the checkpoint, the
manifest, the photos and the output folder at the same paths (a shared file system) or URLs.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from multimodal.errors import UserError


@dataclass(frozen=True)
class Pool:
    """Where and how wide the actor pool runs."""

    address: str | None  # None: a local Ray started for this job
    actors: int
    cpus: float
    gpus: float


def driver(args: argparse.Namespace, command: str, argv: list[str]) -> Callable[..., dict[str, Any] | None]:
    """The executor of ``--engine ray`` for :class:`multimodal.batch_job.Job` (after one-line errors for options
    that belong to the Lightning engine or are out of range)."""
    if str(args.devices) not in ("1", "auto") or args.strategy != "auto":
        raise UserError("--engine ray runs one model per actor: give --num_actors instead of --devices / --strategy")
    if args.limit_batches is not None:
        raise UserError("--limit_batches belongs to --engine lightning")
    if args.num_actors < 1 or args.actor_cpus <= 0 or args.actor_gpus < 0:
        raise UserError(
            f"--num_actors and --actor_cpus must be positive and --actor_gpus not negative, not "
            f"{args.num_actors}, {args.actor_cpus} and {args.actor_gpus}"
        )
    if args.ray_address is not None:
        reachable(args.ray_address)  # before the checkpoint and the manifest are read
    pool = Pool(args.ray_address, args.num_actors, args.actor_cpus, args.actor_gpus)

    def execute(job: Any, predictor: Any, dataset: Any, sink: Any, spec: dict[str, Any], record_fields: Any) -> Any:
        return run_on_ray(job.options, dataset, sink, spec, pool, (os.getcwd(), command, argv))

    return execute


def run_on_ray(
    options: Any, dataset: Any, sink: Any, spec: dict[str, Any], pool: Pool, job_line: tuple[str, str, list[str]]
) -> dict[str, Any]:
    """Predict every unfinished block of the job on Ray, then finalize the output here (as ``run_job`` does)."""
    from multimodal.writers import job_blocks, open_job, output_lock

    blocks, spec = job_blocks(dataset, spec, options)
    with output_lock(sink.output):
        if open_job(sink, spec, blocks):
            return {"out": sink.describe(), "already_complete": True}
        todo = [b for b in range(blocks.count) if not sink.block_done(b)]
        if todo:
            with ray_session(pool):
                predict_blocks(todo, pool, job_line, options.progress)
        missing = [b for b in range(blocks.count) if not sink.block_done(b)]
        if missing:  # an actor's block failed for good: a re-run finishes the job
            sink.incomplete(blocks, spec, missing)
            return {"out": sink.describe(), "complete": False, "missing_blocks": missing}
        return {**sink.finalize(blocks, spec), "complete": True, "resumed_blocks": blocks.count - len(todo)}


def reachable(address: str) -> None:
    """A one-line error within seconds when nothing listens at ``host:port`` (``ray.init`` would retry for long)."""
    if address == "auto":
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--ray_address {address}: give host:port, ray://host:port or auto")
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as err:
        raise UserError(f"--ray_address {address}: no Ray cluster answers there ({err.strerror or err})") from None


@contextmanager
def ray_session(pool: Pool) -> Iterator[None]:
    """Ray connected for the job: the cluster at ``pool.address``, or a local Ray (no dashboard) started here and
    shut down after; a Ray the caller already started is used as it is."""
    try:
        import ray
    except ImportError:
        raise UserError("--engine ray needs Ray Data: pip install 'ray[data]'") from None
    started = not ray.is_initialized()
    if started and pool.address is not None:
        try:
            ray.init(address=pool.address, log_to_driver=False, logging_level="ERROR")
        except (ConnectionError, RuntimeError) as err:
            raise UserError(f"--ray_address {pool.address}: {str(err).splitlines()[0]}") from None
    elif started:
        # "local": a new Ray for this job, even where another runs here (--ray_address auto joins that one)
        ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        have = ray.cluster_resources().get("CPU", 0)
        if pool.actors * pool.cpus > have:
            raise UserError(
                f"{pool.actors} actors of {pool.cpus} CPUs need {pool.actors * pool.cpus:g} CPUs; the Ray cluster "
                f"has {have:g}: lower --num_actors or --actor_cpus"
            )
        yield
    finally:
        if started:
            ray.shutdown()


def predict_blocks(todo: list[int], pool: Pool, job_line: tuple[str, str, list[str]], progress: bool) -> None:
    """Run ``todo`` (block numbers, one Ray block each so the pool shares them out) through :class:`BlockWorker`."""
    import ray
    import ray.data  # configures Ray Data's loggers: quieted below, after it

    from multimodal.ray_worker import BlockWorker

    if progress:
        ray.data.DataContext.get_current().enable_progress_bars = True
    else:  # Ray Data's own progress log lines and its warning that the bars are off
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        ray.data.DataContext.get_current().enable_progress_bars = False
    blocks = ray.data.from_items([{"block": b} for b in todo], override_num_blocks=len(todo))
    done = blocks.map_batches(
        BlockWorker,
        fn_constructor_args=job_line,
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=pool.actors),
        num_cpus=pool.cpus,
        num_gpus=pool.gpus or None,
    )
    try:
        for _ in done.iter_batches(batch_size=None):
            pass
    except Exception as err:  # noqa: BLE001 - Ray wraps a worker's error: a user mistake is shown as one line
        cause = user_error(err)
        if cause is None:
            raise
        raise UserError(str(cause)) from None


def user_error(err: BaseException) -> UserError | None:
    """The :class:`UserError` a worker raised, from the exceptions Ray wraps it in (None: not a user mistake)."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [err]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, UserError):
            return e
        stack += [e.__cause__, e.__context__, getattr(e, "cause", None)]
    return None
