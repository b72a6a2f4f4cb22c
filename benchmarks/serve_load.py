"""Loopback load test of ``multimodal serve``: dynamic batching against batch size 1, in the same run.

For each ``--max_batch_size`` (default 1 and 32) a fresh service is started on a free loopback port with the given
models; then ``GET /search?text=`` (the sample's 842 titles as queries, in turn) and ``POST /tag`` (the sample's
photos + titles, multipart, in turn) are sent by 16 and 64 concurrent clients, each cell ``--repeats`` times after a
warm-up (medians reported). Each cell reports requests answered (2xx) and their rate, p50 and p99 latency, and
failed requests (socket errors, timeouts and any status but 2xx) counted by reason; a cell that answered nothing has
no rate (null, with a note) and its ratios are null. The ratio that matters is requests/s at batch 32 / batch 1 on
``/tag`` at 64 clients (bar: >= 2).

The load generator is wrk (a C program: ``apt-get install wrk``), which runs each cell for ``--seconds`` and stops
by itself; without it (``--client httpx``), asyncio + httpx in this process send ``--*_requests`` requests per cell.
Both share the machine's cores with the service: httpx costs about 6 ms of CPU per tag request, which on a 2-core
box is CPU the batched service would otherwise use (measured: 1.5-1.9x with httpx, 2.7x with wrk on /tag).

Memory: on the batched service, the resident memory of the whole process tree (HTTP servers, inference workers,
LitServe's manager) is read before and after ``--memory_requests`` (default 10,000) more requests (httpx, an exact
count), 90% search and 10% tag: current RSS and peak RSS (VmHWM), summed over processes; growth must stay under 10%.
Its failed requests are counted by reason too: a request that waits in the service's queue longer than the
service's ``--timeout`` (60 s by default; on a loaded machine a burst of tag requests can) is answered
``504 Request timed out`` by LitServe.

Runtime install (:mod:`benchmarks.serve_runtime`): the tagger alone, served from its ONNX export by the runtime
install (``--runtime-venv``, or this Python with torch blocked without one), by the full install (``--runtime onnx``)
and from the checkpoint, at the largest batch size: ``/tag`` req/s at each client count and the resident memory of
each process tree; the ratios are runtime / full req/s at 64 clients and full / runtime memory.

``--smoke`` serves an untrained tiny tagger and an index of 40 sample products (built here) to a few clients.

    make serve-demo    # once: trains the demo models (or give your own checkpoints)
    python -m benchmarks.serve_load --tagger runs/serve-demo/tagger.ckpt --index runs/serve-demo/index \
        --out benchmarks/results/serve_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchmarks.common import machine, ratio, say, write_json
from benchmarks.harness import SAMPLE, TINY, Option, parse, parser
from benchmarks.http_load import Requests, load, load_wrk, write_wrk_inputs
from benchmarks.serve_runtime import SERVICES, measure_runtimes
from benchmarks.service import Service, memory
from benchmarks.smoke import config_checkpoint, index_of, sample_rows

# --smoke: tiny untrained models built here, batch 1 vs 4, 2 clients, a few requests (httpx)
SMOKE = {"tagger": "", "index": "", "batch_sizes": [1, 4], "clients": [2], "search_requests": 8, "tag_requests": 4,
         "repeats": 1, "memory_requests": 20, "warmup_requests": 4, "client": "httpx", "seconds": 1,
         "runtime_services": ["full", "runtime"]}  # fmt: skip


def median_cell(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the runs that answered (null when none did), every failure counted."""
    cell: dict[str, Any] = {}
    for key in ("requests_per_s", "p50_ms", "p99_ms"):
        values = [r[key] for r in runs if r[key] is not None]
        cell[key] = round(statistics.median(values), 2) if values else None
    cell.update(answered=sum(r["answered"] for r in runs), failed=sum(r["failed"] for r in runs),
                failure_reasons=reasons(runs), runs=runs)  # fmt: skip
    if cell["requests_per_s"] is None:
        cell["note"] = "no request answered in this cell: no rate, and no ratio with it"
    return cell


def reasons(cells: Iterable[dict[str, Any]]) -> dict[str, int]:
    """The failed requests of ``cells`` (or runs) counted by reason, summed."""
    out: dict[str, int] = {}
    for c in cells:
        for why, count in c["failure_reasons"].items():
            out[why] = out.get(why, 0) + count
    return out


def failed(cell: dict[str, Any]) -> str:
    """The failed count of a cell, with its reasons when there were failures."""
    reasons = "; ".join(f"{n} x {why}" for why, n in cell["failure_reasons"].items())
    return f"{cell['failed']} ({reasons})" if reasons else str(cell["failed"])


OPTIONS = {
    "--tagger": Option("runs/serve-demo/tagger.ckpt", "(empty: an untrained tiny one, built)"),
    "--index": Option("runs/serve-demo/index", "(empty: a tiny one of 40 products, built)"),
    "--batch_sizes": Option([1, 32]),
    "--clients": Option([16, 64]),
    "--search_requests": Option(640, "requests per search cell"),
    "--tag_requests": Option(320, "requests per tag cell"),
    "--repeats": Option(3),
    "--warmup_requests": Option(32, "requests sent to a new service before timing"),
    "--batch_timeout": Option(0.01),
    "--serve_args": Option("", "more `multimodal serve` options, e.g. '--threads 1'"),
    "--memory_requests": Option(10_000),
    "--runtime-services": Option(list(SERVICES), "the tagger services of the runtime comparison: the runtime "
                                 "install and the full install on the same ONNX export, the full install on the "
                                 "checkpoint (each ratio needs its two)", choices=list(SERVICES), nargs="+"),
    "--runtime-venv": Option("runs/runtime-venv", "the runtime install (python -m benchmarks.runtime_env); missing: "
                             "this Python with torch blocked"),
    "--client": Option("wrk" if shutil.which("wrk") else "httpx", choices=["wrk", "httpx"],
                       help="load generator (default wrk, a C program, when installed: apt-get install wrk)"),
    "--seconds": Option(15, "length of a wrk cell (httpx: --*_requests)"),
    "--out": Option("benchmarks/results/serve_load.json"),
}  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return parse(parser("serve_load", __doc__, OPTIONS, show_defaults=False), argv, SMOKE, "benchmarks.serve_load")


def tiny_models(work: Path) -> tuple[Path, Path]:
    """An untrained tiny tagger and an index of 40 sample products by an untrained tiny retriever."""
    catalogue, images = sample_rows(40, work / "catalogue.csv"), SAMPLE / "images"
    tagger = config_checkpoint(TINY["tagging"], catalogue, images, work / "tagger.ckpt")
    retriever = config_checkpoint(TINY["retrieval"], catalogue, images, work / "retriever.ckpt")
    return tagger, index_of(retriever, catalogue, work)


class Cells:
    """The load cells of one service: each endpoint x clients, ``--repeats`` runs after a warm-up."""

    def __init__(self, args: argparse.Namespace, requests: Requests) -> None:
        self.args, self.requests = args, requests
        self.wrk = None
        if args.client == "wrk":
            self.wrk = write_wrk_inputs(requests, Path(tempfile.mkdtemp(prefix="serve-load-wrk-")))

    def run(self, url: str, endpoint: str, n: int, clients: int, seconds: float) -> dict[str, Any]:
        """``n`` requests (httpx), or as many as ``seconds`` allow (wrk: it runs for a set time)."""
        if self.wrk is not None:
            return load_wrk(url, self.wrk, endpoint, seconds, clients)
        return asyncio.run(load(url, self.requests, [endpoint] * n, clients))

    def warm(self, url: str, endpoints: list[str]) -> None:
        """Requests sent to a new service before any timing (``--warmup_requests``, endpoints in turn)."""
        warm = max(self.args.warmup_requests // len(endpoints), 1)
        asyncio.run(load(url, self.requests, endpoints * warm, min(8, warm * len(endpoints))))

    def cell(self, url: str, endpoint: str, clients: int, label: str) -> dict[str, Any]:
        """One cell: a warm-up (new batch shapes) then ``--repeats`` runs, medians; one line said (``label`` first)."""
        args = self.args
        n = args.search_requests if endpoint == "search" else args.tag_requests
        self.run(url, endpoint, clients * 2, clients, 4)
        cell = median_cell([self.run(url, endpoint, n, clients, args.seconds) for _ in range(args.repeats)])
        rate, p50, p99 = (f"{cell[k]:7.1f}" if cell[k] is not None else "   null" for k in
                          ("requests_per_s", "p50_ms", "p99_ms"))  # fmt: skip
        say(f"{endpoint:6s} {label} clients {clients:2d}: {rate} req/s, p50 {p50} ms, p99 {p99} ms, "
            f"answered {cell['answered']}, failed {failed(cell)}")  # fmt: skip
        return cell

    def measure(self, service: Service, batch: int, results: dict[str, Any]) -> None:
        """Every cell of ``service`` (started with ``max_batch_size`` ``batch``) into ``results["cells"]``."""
        self.warm(service.url, ["search", "tag"])
        for endpoint in ("search", "tag"):
            for clients in self.args.clients:
                cell = self.cell(service.url, endpoint, clients, f"batch {batch:2d}")
                results["cells"][f"{endpoint}/b{batch}/c{clients}"] = cell
                write_json(self.args.out, results)

    def memory_phase(self, service: Service, results: dict[str, Any]) -> None:
        """Resident memory of the service's process tree before and after ``--memory_requests`` more requests."""
        before = memory(service.proc.pid)
        plan = ["tag" if i % 10 == 0 else "search" for i in range(self.args.memory_requests)]
        run = asyncio.run(load(service.url, self.requests, plan, 32))
        after = memory(service.proc.pid)
        growth = {f"{k}_growth": ratio(after[f"{k}_mib"] - before[f"{k}_mib"], before[f"{k}_mib"])
                  for k in ("rss", "peak")}  # fmt: skip
        results["memory"] = {"before": before, "after": after, "run": run, **growth}
        rss, peak = (f"{before[k]} -> {after[k]} MiB" for k in ("rss_mib", "peak_mib"))
        say(f"memory over {self.args.memory_requests} requests (answered {run['answered']}, failed {failed(run)}): "
            f"RSS {rss}, peak {peak}")  # fmt: skip
        write_json(self.args.out, results)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="serve-load-"))  # the services' logs (named in any failure), tiny models
    if not args.tagger or not args.index:
        tagger, index = tiny_models(work / "models")
        args.tagger, args.index = args.tagger or str(tagger), args.index or str(index)
    cells = Cells(args, Requests())
    results: dict[str, Any] = {"machine": machine(), "settings": vars(args), "cells": {}}
    for batch in args.batch_sizes:
        say(f"starting the service, max_batch_size {batch}")
        serve = ["--tagger", args.tagger, "--index", args.index, "--max_batch_size", str(batch),
                 "--batch_timeout", str(args.batch_timeout), *args.serve_args.split()]  # fmt: skip
        service = Service(serve, work / f"serve-b{batch}.log")
        try:
            cells.measure(service, batch, results)
            if batch == max(args.batch_sizes) and args.memory_requests:
                cells.memory_phase(service, results)
        finally:
            service.stop()
    measure_runtimes(args, cells, work, results)
    report(args, results)
    shutil.rmtree(work, ignore_errors=True)


def report(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Ratios batched / batch 1 (null where either cell answered nothing) and the failures in all; --out."""
    cells, ratios = results["cells"], {}
    lo, hi = min(args.batch_sizes), max(args.batch_sizes)
    for endpoint in ("search", "tag"):
        for clients in args.clients:
            a, b = cells.get(f"{endpoint}/b{hi}/c{clients}"), cells.get(f"{endpoint}/b{lo}/c{clients}")
            if a and b:
                ratios[f"{endpoint}/c{clients}"] = ratio(a["requests_per_s"], b["requests_per_s"], 3)
    results["ratios_batched_over_b1"] = dict(ratios)
    ratios |= {k: v for k, v in results.get("runtime", {}).items() if k.startswith(("rps_", "rss_"))}
    results["ratios"] = ratios
    every = [*cells.values(), *([results["memory"]["run"]] if "memory" in results else [])]
    every += [c for s in results.get("runtime", {}).get("services", {}).values() for c in s["cells"].values()]
    results["failed_total"] = sum(c["failed"] for c in every)
    results["failure_reasons"] = reasons(every)
    write_json(args.out, results)
    say(f"requests/s, batch {hi} / batch {lo}: {results['ratios_batched_over_b1']}")
    if "runtime" in results:
        say(
            f"runtime install ({results['runtime']['mode']}) / full, /tag at {max(args.clients)} clients: "
            + ", ".join(f"{k} {v}" for k, v in ratios.items() if k.startswith(("rps_", "rss_")))
        )
    say(f"failed requests in all: {failed({'failed': results['failed_total'], 'failure_reasons': reasons(every)})}")


if __name__ == "__main__":
    main()
