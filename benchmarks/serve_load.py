"""Loopback load test of ``multimodal serve``: dynamic batching against batch size 1, in the same run.

For each ``--max_batch_size`` (default 1 and 32) a fresh service is started on a free loopback port with the given
models; then ``GET /search?text=`` (the sample's 842 titles as queries, in turn) and ``POST /tag`` (the sample's
photos + titles, multipart, in turn) are sent by 16 and 64 concurrent clients, each cell ``--repeats`` times after a
warm-up (medians reported). Each cell reports requests/s, p50 and p99 latency and failed requests (socket errors,
timeouts and any status but 2xx). The ratio that matters is requests/s at batch 32 / batch 1 on ``/tag`` at 64
clients (bar: >= 2).

The load generator is wrk (a C program: ``apt-get install wrk``), which runs each cell for ``--seconds`` and stops
by itself; without it (``--client httpx``), asyncio + httpx in this process send ``--*_requests`` requests per cell.
Both share the machine's cores with the service: httpx costs about 6 ms of CPU per tag request, which on a 2-core
box is CPU the batched service would otherwise use (measured: 1.5-1.9x with httpx, 2.7x with wrk on /tag).

Memory: on the batched service, the resident memory of the whole process tree (HTTP servers, inference workers,
LitServe's manager) is read before and after ``--memory_requests`` (default 10,000) more requests (httpx, an exact
count), 90% search and 10% tag: current RSS and peak RSS (VmHWM), summed over processes; growth must stay under 10%.

    make serve-demo    # once: trains the demo models (or give your own checkpoints)
    python -m benchmarks.serve_load --tagger runs/serve-demo/tagger.ckpt --index runs/serve-demo/index \
        --out benchmarks/results/serve_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from benchmarks.common import machine, say, write_json

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "fashion-products"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += parents.get(p, [])
    return out


def memory(pid: int) -> dict[str, float]:
    """Summed current (VmRSS) and peak (VmHWM) resident memory of the process tree, MiB."""
    rss = hwm = 0
    for p in tree(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm += int(line.split()[1])
    return {"rss_mib": round(rss / 1024, 1), "peak_mib": round(hwm / 1024, 1), "processes": len(tree(pid))}


class Service:
    def __init__(self, args: list[str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.out = open(log, "wb")  # noqa: SIM115 - closed in stop()
        command = [sys.executable, "-m", "multimodal.cli", "serve", *args, "--port", str(self.port)]
        self.proc = subprocess.Popen(command, cwd=ROOT, stdout=self.out, stderr=subprocess.STDOUT,
                                     start_new_session=True)  # fmt: skip
        deadline = time.time() + 600
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"serve exited ({self.proc.returncode}); see {log}")
            try:
                if httpx.get(self.url + "/health", timeout=2).text == "ok":
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"serve did not become healthy; see {log}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.out.close()


class Requests:
    """Real requests from the sample: titles as text queries, photos + titles for tagging."""

    def __init__(self) -> None:
        df = pd.read_csv(SAMPLE / "metadata.csv", dtype=str, keep_default_na=False)
        self.titles = df["title"].tolist()
        self.photos = [(SAMPLE / "images" / name).read_bytes() for name in df["image"]]

    def send(self, client: httpx.AsyncClient, endpoint: str, i: int) -> Any:
        if endpoint == "search":
            return client.get("/search", params={"text": self.titles[i % len(self.titles)], "k": 10})
        j = i % len(self.photos)
        return client.post("/tag", files={"image": ("p.jpg", self.photos[j], "image/jpeg")},
                           data={"title": self.titles[j]})  # fmt: skip


async def load(url: str, requests: Requests, plan: list[str], clients: int) -> dict[str, Any]:
    """Send ``plan`` (one endpoint name per request) from ``clients`` concurrent clients."""
    latencies: list[float] = []
    failures: list[str] = []
    counter = iter(range(len(plan)))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:

        async def worker() -> None:
            for i in counter:
                start = time.perf_counter()
                try:
                    answer = await requests.send(client, plan[i], i)
                    if answer.status_code != 200:
                        failures.append(f"{answer.status_code} {answer.text[:120]}")
                except httpx.HTTPError as err:
                    failures.append(f"{type(err).__name__}: {err}")
                latencies.append(time.perf_counter() - start)

        cpu = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF)
    ms = np.array(latencies) * 1000
    return {
        "requests": len(plan),
        "requests_per_s": round(len(plan) / wall, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "failed": len(failures),
        "failures": failures[:5],
        "client_cpu_s": round(after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime, 2),
        "wall_s": round(wall, 2),
    }


WRK_SCRIPT = r"""
-- GET paths (one per line) or POST bodies (one file each), taken in turn; done() prints the numbers as JSON.
local items, method, ctype, n, sent = {}, "GET", nil, 0, 0
local counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
function init(args)
  local dir, kind = args[1], args[2]
  if kind == "search" then
    for line in io.lines(dir .. "/paths.txt") do items[#items + 1] = line end
  else
    method, ctype = "POST", "multipart/form-data; boundary=" .. args[3]
    local i = 0
    while true do
      local f = io.open(string.format("%s/%06d.body", dir, i), "rb")
      if not f then break end
      items[#items + 1] = f:read("*all"); f:close(); i = i + 1
    end
  end
  n = #items
  sent = (id or 0) * 397
end
function request()
  sent = sent + 1
  local item = items[(sent % n) + 1]
  if method == "GET" then return wrk.format("GET", item) end
  return wrk.format("POST", "/tag", {["Content-Type"] = ctype}, item)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('\nRESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}\n', summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), e.connect, e.read, e.write, e.status, e.timeout))
end
"""
BOUNDARY = "multimodal-serve-load"


def write_wrk_inputs(requests: Requests, folder: Path) -> Path:
    """The Lua script, search paths and multipart tag bodies (real sample photos and titles) for wrk."""
    from urllib.parse import urlencode

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "load.lua").write_text(WRK_SCRIPT)
    (folder / "paths.txt").write_text("".join(f"/search?{urlencode({'text': t, 'k': 10})}\n" for t in requests.titles))
    for i, (photo, title) in enumerate(zip(requests.photos, requests.titles, strict=True)):
        body = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="title"\r\n\r\n{title}\r\n'
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="p.jpg"\r\n'
                f"Content-Type: image/jpeg\r\n\r\n").encode() + photo + f"\r\n--{BOUNDARY}--\r\n".encode()  # fmt: skip
        (folder / f"{i:06d}.body").write_bytes(body)
    return folder


def load_wrk(url: str, folder: Path, endpoint: str, seconds: float, clients: int) -> dict[str, Any]:
    """``clients`` connections sending for ``seconds`` with wrk (2 threads); latencies of answered requests."""
    import json

    threads = 2 if clients >= 2 else 1
    command = ["wrk", "-t", str(threads), "-c", str(clients), "-d", f"{int(seconds)}s", "--timeout", "120s",
               "-s", str(folder / "load.lua"), url, "--", str(folder), endpoint, BOUNDARY]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 300)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"wrk failed: {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
    r = json.loads(line[len("RESULT ") :])
    return {
        "requests": r["requests"],
        "requests_per_s": round(r["requests"] / (r["duration_us"] / 1e6), 2),
        "p50_ms": round(r["p50_us"] / 1000, 1),
        "p99_ms": round(r["p99_us"] / 1000, 1),
        "failed": r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"],
        "errors": {k: r[k] for k in ("connect", "read", "write", "status", "timeout")},
        "wall_s": round(r["duration_us"] / 1e6, 2),
    }


def median_cell(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("requests_per_s", "p50_ms", "p99_ms")
    cell = {k: round(statistics.median(r[k] for r in runs), 2) for k in keys}
    cell.update(failed=sum(r["failed"] for r in runs), runs=runs)
    return cell


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tagger", default="runs/serve-demo/tagger.ckpt")
    p.add_argument("--index", default="runs/serve-demo/index")
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 32])
    p.add_argument("--clients", type=int, nargs="+", default=[16, 64])
    p.add_argument("--search_requests", type=int, default=640, help="requests per search cell")
    p.add_argument("--tag_requests", type=int, default=320, help="requests per tag cell")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch_timeout", type=float, default=0.01)
    p.add_argument("--serve_args", default="", help="more `multimodal serve` options, e.g. '--threads 1'")
    p.add_argument("--memory_requests", type=int, default=10_000)
    p.add_argument("--client", choices=["wrk", "httpx"], default="wrk" if shutil.which("wrk") else "httpx",
                   help="load generator (default wrk, a C program, when installed: apt-get install wrk)")  # fmt: skip
    p.add_argument("--seconds", type=int, default=15, help="length of a wrk cell (httpx: --*_requests)")
    p.add_argument("--out", default="benchmarks/results/serve_load.json")
    args = p.parse_args()
    requests = Requests()
    wrk_inputs = None
    if args.client == "wrk":
        wrk_inputs = write_wrk_inputs(requests, Path(tempfile.mkdtemp(prefix="serve-load-")))

    def run(url: str, endpoint: str, n: int, clients: int, seconds: float) -> dict[str, Any]:
        """``n`` requests (httpx), or as many as ``seconds`` allow (wrk: it runs for a set time)."""
        if wrk_inputs is not None:
            return load_wrk(url, wrk_inputs, endpoint, seconds, clients)
        return asyncio.run(load(url, requests, [endpoint] * n, clients))

    results: dict[str, Any] = {"machine": machine(), "settings": vars(args), "cells": {}}
    logs = Path(tempfile.mkdtemp(prefix="serve-load-logs-"))  # the services' output, named in any failure
    for batch in args.batch_sizes:
        say(f"starting the service, max_batch_size {batch}")
        serve = ["--tagger", args.tagger, "--index", args.index, "--max_batch_size", str(batch),
                 "--batch_timeout", str(args.batch_timeout), *args.serve_args.split()]  # fmt: skip
        service = Service(serve, logs / f"serve-b{batch}.log")
        try:
            asyncio.run(load(service.url, requests, ["search", "tag"] * 16, 8))  # warm-up
            for endpoint, n in (("search", args.search_requests), ("tag", args.tag_requests)):
                for clients in args.clients:
                    run(service.url, endpoint, clients * 2, clients, 4)  # warm-up: new batch shapes
                    runs = [run(service.url, endpoint, n, clients, args.seconds) for _ in range(args.repeats)]
                    cell = median_cell(runs)
                    results["cells"][f"{endpoint}/b{batch}/c{clients}"] = cell
                    say(f"{endpoint:6s} batch {batch:2d} clients {clients:2d}: {cell['requests_per_s']:7.1f} req/s, "
                        f"p50 {cell['p50_ms']:7.1f} ms, p99 {cell['p99_ms']:7.1f} ms, "
                        f"failed {cell['failed']}")  # fmt: skip
                    write_json(args.out, results)
            if batch == max(args.batch_sizes) and args.memory_requests:
                before = memory(service.proc.pid)
                plan = ["tag" if i % 10 == 0 else "search" for i in range(args.memory_requests)]
                run = asyncio.run(load(service.url, requests, plan, 32))
                after = memory(service.proc.pid)
                results["memory"] = {"before": before, "after": after, "run": run,
                                     "rss_growth": round(after["rss_mib"] / before["rss_mib"] - 1, 4),
                                     "peak_growth": round(after["peak_mib"] / before["peak_mib"] - 1, 4)}  # fmt: skip
                say(f"memory over {args.memory_requests} requests ({run['failed']} failed): RSS {before['rss_mib']} -> "
                    f"{after['rss_mib']} MiB, peak {before['peak_mib']} -> {after['peak_mib']} MiB")  # fmt: skip
                write_json(args.out, results)
        finally:
            service.stop()
    cells = results["cells"]
    ratios = {}
    for endpoint in ("search", "tag"):
        for clients in args.clients:
            lo, hi = (cells.get(f"{endpoint}/b{b}/c{clients}") for b in (min(args.batch_sizes), max(args.batch_sizes)))
            if lo and hi:
                ratios[f"{endpoint}/c{clients}"] = round(hi["requests_per_s"] / lo["requests_per_s"], 3)
    results["ratios_batched_over_b1"] = ratios
    results["failed_total"] = sum(c["failed"] for c in cells.values()) + results.get("memory", {}).get("run", {}).get(
        "failed", 0
    )
    write_json(args.out, results)
    say(f"requests/s, batch {max(args.batch_sizes)} / batch {min(args.batch_sizes)}: {ratios}")
    say(f"failed requests in all: {results['failed_total']}")


if __name__ == "__main__":
    main()
