"""Past one machine: the cost of Ray as the engine of a batch job, and of training from a litdata stream.

Ray (part ``ray``): ``multimodal export`` of the same synthetic catalogue (the committed sample's photos and titles
repeated under new ids) with ``--engine lightning`` (one process, torch on every core, ``--workers`` decoding
workers) and ``--engine ray`` (a local Ray, ``--actors`` actors of one CPU each, each decoding its own photos),
alternated, median of ``--repeats``. Each command runs in a process
of its own. Two rates per run:

- end to end: products / the command's wall time (Python start, Ray start-up and each actor's model load included:
  what a user waits for);
- steady: products of every shard after the first / the time between the first shard and the last being written
  (the engine at work, start-up left out: what a long nightly job runs at). Target: ray / lightning >= 0.85.

The per-actor rate (steady rate / actors) is what the scaling paragraph of docs/distributed.md rests on.

Stream (part ``stream``): training samples/s of the tiny tagger from a litdata stream written by
``multimodal prepare`` vs from the manifest and its local photos (``benchmarks.stream_training``). Target >= 0.9.

    python -m benchmarks.distributed --out benchmarks/results/distributed.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ratio, say
from benchmarks.harness import ROOT, SAMPLE, TINY, Option, Report, parse, parser
from benchmarks.smoke import config_checkpoint
from benchmarks.synthetic import repeated_catalogue

OPTIONS = {
    "--data": Option("examples/fashion-products", "sample whose photos and titles are repeated"),
    "--config": Option("configs/retrieval/dual_encoder.yaml", "retriever exported (untrained: speed only)"),
    "--products": Option(2048, "products exported by each run"),
    "--batch-size": Option(32),
    "--block-size": Option(128, "products per shard (the unit Ray hands to an actor)"),
    "--actors": Option(2, "Ray actors, one CPU each (each decodes its own photos)"),
    "--workers": Option(2, "decoding workers of the single-process export (its best setting on 2 cores)"),
    "--repeats": Option(3, "runs of each engine, alternated; medians are reported"),
    "--parts": Option(["ray", "stream"], "parts run", choices=["ray", "stream"]),
    "--out": Option("benchmarks/results/distributed.json", "result file"),
}
SMOKE = {"data": str(SAMPLE), "config": TINY["retrieval"], "products": 48, "batch_size": 8, "block_size": 8,
         "repeats": 1, "workers": 0}  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The program's options (``--smoke``: the tiny retriever, 48 products, one run of each)."""
    return parse(parser("distributed", __doc__, OPTIONS), argv, SMOKE, "benchmarks.distributed")


def export_run(args: argparse.Namespace, ckpt: Path, catalogue: Path, out: Path, engine: str) -> dict[str, float]:
    """One ``multimodal export`` in its own process: its end-to-end and steady rates (products/s)."""
    command = [sys.executable, "-m", "multimodal.cli", "export", "--ckpt_path", str(ckpt), "--data.manifest",
               str(catalogue), "--image_root", str(Path(args.data).resolve() / "images"), "--out", str(out),
               "--batch_size", str(args.batch_size), "--block_size", str(args.block_size), "--no_progress",
               "--engine", engine, "--num_actors", str(args.actors),
               "--num_workers", str(args.workers if engine == "lightning" else 0)]  # fmt: skip
    start = time.time()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.time() - start
    shards = sorted(out.glob("shard-*.safetensors"), key=lambda p: p.stat().st_mtime)
    first, last = shards[0].stat().st_mtime, shards[-1].stat().st_mtime
    steady = (args.products - args.block_size) / (last - first) if len(shards) > 1 and last > first else None
    return {"wall_s": round(wall, 2), "end_to_end": args.products / wall, "steady": steady}


def ray_part(args: argparse.Namespace, tmp: Path, report: Report) -> None:
    """Export with each engine, alternated; medians and their ratios into ``report``."""
    catalogue = repeated_catalogue(args.products, Path(args.data) / "metadata.csv", tmp / "catalogue.csv")
    ckpt = config_checkpoint(args.config, catalogue, Path(args.data) / "images", tmp / "retriever.ckpt")
    runs: dict[str, list[dict[str, float]]] = {"lightning": [], "ray": []}
    for repeat in range(args.repeats):
        for engine in runs:
            result = export_run(args, ckpt, catalogue, tmp / f"emb-{engine}-{repeat}", engine)
            runs[engine].append(result)
            say(f"{engine} run {repeat + 1}: {result}")
    medians = {e: {k: median([r[k] for r in rs]) for k in ("end_to_end", "steady")} for e, rs in runs.items()}
    report["ray"] = {"runs": runs, "medians": medians, "per_actor_steady": ratio(medians["ray"]["steady"], args.actors)}
    report.setdefault("ratios", {}).update({
        "ray / lightning, steady (target >= 0.85)": ratio(medians["ray"]["steady"], medians["lightning"]["steady"]),
        "ray / lightning, end to end": ratio(medians["ray"]["end_to_end"], medians["lightning"]["end_to_end"]),
    })  # fmt: skip
    report.save()


def median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def stream_part(args: argparse.Namespace, tmp: Path, report: Report) -> None:
    """Training samples/s from a litdata stream vs from local files (:mod:`benchmarks.stream_training`)."""
    from benchmarks.stream_training import training_rates

    steps = {"warmup": 1, "steps": 2} if args.smoke else {}
    rates = training_rates(Path(args.data), repeats=max(args.repeats, 3) if not args.smoke else 1, **steps)
    report["stream"] = rates
    ratios = report.setdefault("ratios", {})
    ratios["stream / local files, training samples/s (target >= 0.9)"] = rates["stream_vs_local_files"]
    report.save()


def table(report: Report) -> str:
    lines = ["engine     end-to-end products/s   steady products/s"]
    for engine, m in (report.get("ray") or {}).get("medians", {}).items():
        steady = "-" if m["steady"] is None else f"{m['steady']:.1f}"
        lines.append(f"{engine:<10} {m['end_to_end']:>22.1f}   {steady:>17}")
    stream = report.get("stream")
    if stream:
        lines.append(f"training samples/s: stream {stream['stream']:.1f}, local files {stream['local_files']:.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> Report:
    args = parse_args(argv)
    report = Report(args.out, args)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    with tempfile.TemporaryDirectory() as folder:
        if "ray" in args.parts:
            ray_part(args, Path(folder), report)
        if "stream" in args.parts:
            stream_part(args, Path(folder), report)
    return report.finish(table(report))


if __name__ == "__main__":
    main()
