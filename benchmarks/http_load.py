"""Load generators of ``benchmarks.serve_load``: real sample requests sent by httpx (an exact count) or by wrk (for a
set time), each cell summed up the same way: requests answered (2xx) and failed (with their reasons), the rate of
answered requests, latency percentiles. A cell that answered nothing has no rate (null, with a note), never a
division by zero."""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import numpy as np
import pandas as pd

from benchmarks.common import ratio
from benchmarks.smoke import SAMPLE

BOUNDARY = "multimodal-serve-load"


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


def summary(answered: int, reasons: Counter, wall: float, p50_ms: float | None, p99_ms: float | None) -> dict[str, Any]:
    """One cell: ``answered`` 2xx answers in ``wall`` seconds, the failed requests counted by reason."""
    out: dict[str, Any] = {
        "requests": answered + sum(reasons.values()),
        "answered": answered,
        "failed": sum(reasons.values()),
        "failure_reasons": dict(reasons.most_common()),
        "requests_per_s": ratio(answered, wall, 2) if answered else None,
        "p50_ms": None if p50_ms is None else round(p50_ms, 1),
        "p99_ms": None if p99_ms is None else round(p99_ms, 1),
        "wall_s": round(wall, 2),
    }
    if not answered:
        out["note"] = "no request answered in this cell: no rate or latency"
    return out


def reason(answer: httpx.Response | None, err: Exception | None = None) -> str:
    """Why a request failed, in one short line (its status and detail, or the client error)."""
    if err is not None:
        return f"{type(err).__name__}: {str(err)[:80]}".rstrip(": ")
    assert answer is not None
    try:
        detail = str(answer.json().get("detail", ""))
    except ValueError:
        detail = answer.text
    return f"HTTP {answer.status_code} {detail[:80]}".strip()


async def load(url: str, requests: Requests, plan: list[str], clients: int) -> dict[str, Any]:
    """Send ``plan`` (one endpoint name per request) from ``clients`` concurrent clients."""
    latencies: list[float] = []  # answered requests only
    failures: Counter = Counter()
    counter = iter(range(len(plan)))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:

        async def worker() -> None:
            for i in counter:
                start = time.perf_counter()
                try:
                    answer = await requests.send(client, plan[i], i)
                except httpx.HTTPError as err:
                    failures[reason(None, err)] += 1
                    continue
                if answer.status_code == 200:
                    latencies.append(time.perf_counter() - start)
                else:
                    failures[reason(answer)] += 1

        cpu = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF)
    ms = np.array(latencies) * 1000
    p50 = float(np.percentile(ms, 50)) if len(ms) else None
    p99 = float(np.percentile(ms, 99)) if len(ms) else None
    out = summary(len(latencies), failures, wall, p50, p99)
    out["client_cpu_s"] = round(after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime, 2)
    return out


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


def write_wrk_inputs(requests: Requests, folder: Path) -> Path:
    """The Lua script, search paths and multipart tag bodies (real sample photos and titles) for wrk."""
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
    """``clients`` connections sending for ``seconds`` with wrk (2 threads). wrk's ``requests`` are the completed
    ones, ``status`` errors those of them answered with another status than 2xx / 3xx; its latencies are of every
    completed request."""
    threads = 2 if clients >= 2 else 1
    command = ["wrk", "-t", str(threads), "-c", str(clients), "-d", f"{max(int(seconds), 1)}s", "--timeout", "120s",
               "-s", str(folder / "load.lua"), url, "--", str(folder), endpoint, BOUNDARY]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 300)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"wrk failed: {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
    r = json.loads(line[len("RESULT ") :])
    errors = {k: r[k] for k in ("connect", "read", "write", "status", "timeout")}
    reasons = Counter({f"wrk {k} errors": v for k, v in errors.items() if v})
    answered = max(r["requests"] - r["status"], 0)
    seen = r["requests"] > 0  # wrk's percentiles of no request are 0, not a latency
    out = summary(answered, reasons, r["duration_us"] / 1e6, r["p50_us"] / 1000 if seen else None,
                  r["p99_us"] / 1000 if seen else None)  # fmt: skip
    out["errors"] = errors
    return out
