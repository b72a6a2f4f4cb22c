"""A ``multimodal serve`` process for load tests: started on a free loopback port in its own process group, ready
once ``/health`` answers ok, stopped by SIGTERM; and the resident memory of its whole process tree."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from benchmarks.harness import ROOT


def free_port() -> int:
    """A loopback port nobody listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(proc: subprocess.Popen, url: str, seconds: float) -> str | None:
    """Wait until the service at ``url`` answers ``/health`` with ok (None), or why it did not: it exited, or it
    did not within ``seconds``."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            return f"serve exited with {proc.returncode}"
        try:
            if httpx.get(url + "/health", timeout=2).text == "ok":
                return None
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return f"serve did not become healthy in {seconds:g} s"


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
    """``multimodal serve <args>`` in its own process group, on a free loopback port, once /health answers ok."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.out = open(log, "wb")  # noqa: SIM115 - closed in stop()
        command = [sys.executable, "-m", "multimodal.cli", "serve", *args, "--port", str(self.port)]
        self.proc = subprocess.Popen(command, cwd=ROOT, stdout=self.out, stderr=subprocess.STDOUT,
                                     start_new_session=True)  # fmt: skip
        problem = wait_healthy(self.proc, self.url, 600)
        if problem is not None:
            self.stop()
            raise SystemExit(f"{problem}; see {log}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.out.close()
