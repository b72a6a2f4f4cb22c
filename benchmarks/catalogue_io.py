"""Real catalogues: photos behind a CDN, and batch jobs over manifests larger than memory.

Photos (acceptance part a): ``multimodal export`` rows/s reading every photo from a loopback HTTP server that adds
``--latency-ms`` (20 ms) to each photo, vs the same photos from local files, in the same run, alternated, median of
``--repeats``; no photo cache (every photo crosses the network each time) and the same workers for both. Target:
HTTP / local >= 0.8. Each export is timed inside this process after a warm-up run, so process start-up is left out.

Memory (acceptance parts b and c): the peak RSS of ``multimodal export`` (a retriever) and of ``multimodal predict``
(a tagger) over a small and a large Parquet manifest whose rows repeat the committed sample's photos and text under
new ids. Each job runs in a process of its own; its peak RSS is the kernel's high-water mark (``VmHWM`` in
``/proc/<pid>/status``, read while it runs, and the rusage of the reaped process). Both sizes predict the same
number of rows (``--rows``, through the job's ``--limit_batches``), so the only difference between the two runs is
the manifest they stream: the ratio large / small is what the catalogue's size costs (target <= 1.1). Checkpoints
are written from the tiny configs without training (memory does not depend on the weights).

    python -m benchmarks.catalogue_io --out benchmarks/results/catalogue_io.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import quiet_lightning, ratio, say
from benchmarks.harness import ROOT, SAMPLE, TINY, Option, Report, parse, parser
from benchmarks.smoke import config_checkpoint

JOBS = {"export": ("retrieval", "export"), "predict": ("tagging", "predict")}  # job -> (tiny config, command)
OPTIONS = {
    "--data": Option("examples/fashion-products", "sample whose photos and text rows are repeated"),
    "--sizes": Option([10_000, 1_000_000], "manifest rows compared (small, large)"),
    "--rows": Option(4096, "rows each job predicts (its --limit_batches), the same for every size"),
    "--jobs": Option(list(JOBS), "jobs measured", choices=list(JOBS)),
    "--batch-size": Option(64),
    "--block-size": Option(1024, "rows per output block (a shard of an export)"),
    "--row-group-rows": Option(65536, "rows per Parquet row group of the manifests"),
    "--photo-rows": Option(2048, "rows of the photos part (a): exported from local files and over HTTP"),
    "--latency-ms": Option(20.0, "latency the photo server adds to every photo (part a)"),
    "--repeats": Option(3, "runs of each photo source (part a); the median is reported"),
    "--workers": Option(2, "data-loading workers of the photos part (both sources)"),
    "--parts": Option(["photos", "memory"], "parts run", choices=["photos", "memory"]),
    "--in-process": Option(False, "run each job in this process (every peak RSS is then this process's: smoke)"),
    "--out": Option("benchmarks/results/catalogue_io.json", "result file"),
}
SMOKE = {"data": str(SAMPLE), "sizes": [40, 400], "rows": 16, "batch_size": 8, "block_size": 8, "in_process": True,
         "photo_rows": 32, "repeats": 1, "workers": 0}  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The program's options (``--smoke``: tiny manifests, 16 rows, every job in this process)."""
    return parse(parser("catalogue_io", __doc__, OPTIONS), argv, SMOKE, "benchmarks.catalogue_io")


def status_mb(pid: int, key: str = "VmHWM") -> float:
    """A memory line of ``/proc/<pid>/status`` in MB (``VmHWM``: the peak RSS so far; ``VmRSS``: now); 0 once the
    process is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run_job(argv: list[str], in_process: bool) -> dict[str, float]:
    """``multimodal <argv>`` in its own process (or this one): its peak RSS in MB and its seconds."""
    start = time.perf_counter()
    if in_process:
        from multimodal.cli import main

        with contextlib.redirect_stdout(io.StringIO()):
            main(argv)
        return {"peak_rss_mb": status_mb(os.getpid()), "last_rss_mb": status_mb(os.getpid(), "VmRSS"),
                "seconds": time.perf_counter() - start}  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "multimodal.cli", *argv], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    peak, last = [0.0], [0.0]

    def watch() -> None:  # /proc/<pid> is only readable while the process lives: sample it until it ends
        while proc.poll() is None:
            peak[0] = max(peak[0], status_mb(proc.pid))
            last[0] = status_mb(proc.pid, "VmRSS") or last[0]  # the RSS as the job ends (its predict loop's)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    _, stderr = proc.communicate()
    watcher.join()
    if proc.returncode != 0:
        raise RuntimeError(f"multimodal {argv[0]} failed ({proc.returncode}): {stderr[-2000:]}")
    return {"peak_rss_mb": peak[0], "last_rss_mb": last[0], "seconds": time.perf_counter() - start}


def job_argv(job: str, ckpt: Path, manifest: Path, images: Path, out: Path, args: argparse.Namespace) -> list[str]:
    """The command line of one bounded job: ``--rows`` rows predicted, whatever the manifest's size."""
    batches = max(1, args.rows // args.batch_size)
    return [JOBS[job][1], "--ckpt_path", str(ckpt), "--data.manifest", str(manifest), "--data.image_root",
            str(images), "--out", str(out), "--batch_size", str(args.batch_size), "--block_size",
            str(args.block_size), "--limit_batches", str(batches), "--accelerator", "cpu", "--no_progress"]  # fmt: skip


def memory_part(args: argparse.Namespace, sample: Path, tmp: Path, report: Report) -> None:
    """Parts (b) and (c): peak RSS of each job over the small and the large manifest."""
    from benchmarks.catalogue_data import write_repeated_manifest

    manifests = {}
    for n in args.sizes:
        start = time.perf_counter()
        manifests[n] = write_repeated_manifest(sample / "metadata.csv", tmp / f"catalogue-{n}.parquet", n,
                                               args.row_group_rows)  # fmt: skip
        say(f"manifest of {n:,} rows written in {time.perf_counter() - start:.1f} s")
    memory: dict[str, dict[str, Any]] = report.setdefault("memory", {})
    for job in args.jobs:
        config = TINY[JOBS[job][0]]
        ckpt = config_checkpoint(config, sample / "metadata.csv", sample / "images", tmp / f"{job}.ckpt")
        for n in args.sizes:
            out = tmp / (f"{job}-{n}" if job == "export" else f"{job}-{n}.jsonl")
            result = run_job(job_argv(job, ckpt, manifests[n], sample / "images", out, args), args.in_process)
            memory.setdefault(job, {})[str(n)] = result
            say(f"{job} over {n:,} rows: {result}")
            report.save()
    small, large = (str(n) for n in args.sizes)
    for job in args.jobs:
        a, b = memory[job][small], memory[job][large]
        report.setdefault("ratios", {}).update({
            f"{job} peak RSS, {large} / {small} rows": ratio(b["peak_rss_mb"], a["peak_rss_mb"]),
            f"{job} RSS as it ends, {large} / {small} rows": ratio(b["last_rss_mb"], a["last_rss_mb"]),
        })  # fmt: skip


def photos_part(args: argparse.Namespace, sample: Path, tmp: Path, report: Report) -> None:
    """Part (a): export rows/s with every photo fetched over HTTP (``--latency-ms`` each) vs read from local files,
    and the CPU seconds each run costs this machine (the job with its workers, plus the server for HTTP)."""
    from benchmarks.catalogue_data import write_repeated_manifest

    manifest = write_repeated_manifest(sample / "metadata.csv", tmp / "photos.parquet", args.photo_rows,
                                       args.row_group_rows)  # fmt: skip
    ckpt = config_checkpoint(TINY["retrieval"], sample / "metadata.csv", sample / "images", tmp / "photos.ckpt")
    runs: dict[str, list[dict[str, float]]] = {"local": [], "http": []}
    with photo_server(sample / "images", args.latency_ms) as (url, server_cpu):
        roots = {"local": str(sample / "images"), "http": f"{url}/photos/"}
        for repeat in range(-1, args.repeats):  # run -1 warms up (imports, first model load)
            for source, root in roots.items():
                argv = photo_argv(ckpt, manifest, root, tmp / f"emb-{source}-{repeat}", args)
                cpu, served = cpu_seconds(), server_cpu()
                seconds = run_job(argv, in_process=True)["seconds"]
                run = {"rows_per_s": args.photo_rows / seconds, "job_cpu_s": cpu_seconds() - cpu,
                       "server_cpu_s": server_cpu() - served}  # fmt: skip
                if repeat >= 0:
                    runs[source].append(run)
                    say(f"export, photos {source}: {run}")
    medians = {source: {k: float(np.median([r[k] for r in rs])) for k in rs[0]} for source, rs in runs.items()}
    report["photos"] = {"runs": runs, "medians": medians}
    http, local = medians["http"], medians["local"]
    report.setdefault("ratios", {}).update({
        "export rows/s, photos over HTTP / local files": ratio(http["rows_per_s"], local["rows_per_s"]),
        "CPU seconds, HTTP run (job + server) / local run": ratio(http["job_cpu_s"] + http["server_cpu_s"],
                                                                  local["job_cpu_s"] + local["server_cpu_s"]),
    })  # fmt: skip
    report.save()


def cpu_seconds() -> float:
    """CPU seconds of this process and its reaped children (the job's data-loading workers) so far."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@contextlib.contextmanager
def photo_server(root: Path, latency_ms: float) -> Iterator[tuple[str, Callable[[], float]]]:
    """``benchmarks.photo_server`` in a process of its own (as a CDN is not inside the job's process): its URL and
    a function giving its CPU seconds so far."""
    import psutil

    command = [sys.executable, "-m", "benchmarks.photo_server", "--root", str(root), "--latency_ms", str(latency_ms),
               "--engine", "aiohttp"]  # fmt: skip
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        server = psutil.Process(proc.pid)
        yield url, lambda: sum(server.cpu_times()[:2])
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def photo_argv(ckpt: Path, manifest: Path, root: str, out: Path, args: argparse.Namespace) -> list[str]:
    """An export of every row of ``manifest``, photos under ``root``, no photo cache, fetching a batch at once."""
    return ["export", "--ckpt_path", str(ckpt), "--data.manifest", str(manifest), "--data.image_root", root,
            "--out", str(out), "--batch_size", str(args.batch_size), "--num_workers", str(args.workers),
            "--fetch_concurrency", str(args.batch_size), "--photo_cache", "", "--accelerator", "cpu",
            "--no_progress"]  # fmt: skip


# The parts of the run, in order.
PARTS: dict[str, Callable[[argparse.Namespace, Path, Path, Report], None]] = {
    "photos": photos_part,
    "memory": memory_part,
}


def table(report: Report, args: argparse.Namespace) -> str:
    """The photos and memory comparisons as Markdown tables."""
    lines = []
    if "photos" in report:
        local, http = report["photos"]["medians"]["local"], report["photos"]["medians"]["http"]
        value = report["ratios"]["export rows/s, photos over HTTP / local files"]
        cpu = report["ratios"]["CPU seconds, HTTP run (job + server) / local run"]
        lines += [f"Export of {args.photo_rows:,} rows, {args.workers} workers, median of {args.repeats}:", "",
                  f"| | local files | HTTP, {args.latency_ms:g} ms a photo | **HTTP / local** |", "|---|---|---|---|",
                  f"| rows/s | {local['rows_per_s']:.1f} | {http['rows_per_s']:.1f} | **{value:.3f}** |",
                  f"| CPU s (job + server) | {local['job_cpu_s']:.1f} | {http['job_cpu_s']:.1f} + "
                  f"{http['server_cpu_s']:.1f} | {cpu:.3f} |", ""]  # fmt: skip
    if "memory" in report:
        lines.append(memory_table(report, args))
    return "\n".join(lines)


def memory_table(report: Report, args: argparse.Namespace) -> str:
    """The memory comparison as a Markdown table."""
    small, large = args.sizes
    lines = [f"RSS (MB) of each job predicting {args.rows:,} rows of Parquet manifests of {small:,} / {large:,} rows:",
             "", "| job | peak, small | peak, large | **ratio** | as it ends, small | as it ends, large | ratio |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for job, runs in report.get("memory", {}).items():
        a, b = runs[str(small)], runs[str(large)]
        peak = report["ratios"][f"{job} peak RSS, {large} / {small} rows"]
        end = report["ratios"][f"{job} RSS as it ends, {large} / {small} rows"]
        lines.append(f"| {job} | {a['peak_rss_mb']:.0f} | {b['peak_rss_mb']:.0f} | **{peak:.3f}** | "
                     f"{a['last_rss_mb']:.0f} | {b['last_rss_mb']:.0f} | {end:.3f} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    quiet_lightning()
    report = Report(args.out, args)
    with tempfile.TemporaryDirectory() as tmp:
        for name, part in PARTS.items():
            if name in args.parts:
                part(args, Path(args.data).resolve(), Path(tmp), report)
    report.finish(table(report, args))


if __name__ == "__main__":
    main()
