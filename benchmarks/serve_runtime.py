"""The runtime install's service for ``benchmarks.serve_load``: ``multimodal serve --tagger`` on the tagger's ONNX
export, started by the runtime install (``pip install multimodal-products``, no torch), against the full install
serving the same export (``--runtime onnx``) and the checkpoint, in the same run.

Each of the three services (``--runtime-services``: all by default) serves the tagger alone, with the benchmark's
largest ``--max_batch_size``; ``POST /tag`` is sent at every ``--clients`` count (warm-up, ``--repeats`` runs,
medians), then the resident memory of the service's process tree is read (current and peak, summed over processes).
The runtime install is the Python of ``--runtime-venv`` (``python -m benchmarks.runtime_env`` builds it) or, without
one, this Python with torch and the training stack blocked (:func:`benchmarks.runtime_env.runtime_python`); ``mode``
records which (venv, blocked).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import ratio, say, write_json
from benchmarks.harness import ROOT
from benchmarks.runtime_env import runtime_python
from benchmarks.service import Service, free_port, memory, wait_healthy

# service name -> (runs on the runtime install, serves the export rather than the checkpoint)
SERVICES = {"checkpoint": (False, False), "full": (False, True), "runtime": (True, True)}


class PythonService(Service):
    """:class:`Service` started by ``python`` with ``env`` added to this process's environment."""

    def __init__(self, args: list[str], log: Path, python: str, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.out = open(log, "wb")  # noqa: SIM115 - closed in stop()
        command = [python, "-m", "multimodal.cli", "serve", *args, "--port", str(self.port)]
        self.proc = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env}, stdout=self.out,
                                     stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        problem = wait_healthy(self.proc, self.url, 600)
        if problem is not None:
            self.stop()
            raise SystemExit(f"{problem}; see {log}")


def export_tagger(checkpoint: str, out: Path) -> Path:
    """The ONNX export of the tagger ``checkpoint`` in the folder ``out`` (fp32 graphs)."""
    from multimodal.onnx.export import export_model

    say(f"exporting the tagger to ONNX for the runtime services: {checkpoint}")
    export_model(checkpoint, out, progress=False)
    return out


def measure_runtimes(args: argparse.Namespace, cells: Any, work: Path, results: dict[str, Any]) -> None:
    """The three tagger services' cells and memory into ``results["runtime"]``, with the ratios runtime / full
    (``cells``: the benchmark's :class:`benchmarks.serve_load.Cells`)."""
    export = export_tagger(args.tagger, work / "tagger-onnx")
    python, env = runtime_python(args.runtime_venv or None)
    mode = "blocked" if env else "venv"
    batch = max(args.batch_sizes)
    section: dict[str, Any] = {"mode": mode, "runtime_venv": args.runtime_venv if not env else None,
                               "max_batch_size": batch, "services": {}}  # fmt: skip
    results["runtime"] = section
    say(f"runtime install: {'the venv ' + args.runtime_venv if not env else 'this Python with torch blocked'}")
    common = ["--max_batch_size", str(batch), "--batch_timeout", str(args.batch_timeout), *args.serve_args.split()]
    for name in args.runtime_services:
        lite, exported = SERVICES[name]
        model = ["--tagger", str(export), "--runtime", "onnx"] if exported else ["--tagger", args.tagger]
        py, extra = (python, env) if lite else (sys.executable, {})
        say(f"starting the tagger service: {name}")
        service = PythonService([*model, *common], work / f"serve-{name}.log", py, extra)
        try:
            section["services"][name] = one_service(service, name, cells, args)
        finally:
            service.stop()
        write_json(args.out, results)
    section.update(runtime_ratios(section["services"], max(args.clients)))
    write_json(args.out, results)


def one_service(service: Service, name: str, cells: Any, args: argparse.Namespace) -> dict[str, Any]:
    """``POST /tag`` at every ``--clients`` count, then the resident memory of the process tree (idle: before)."""
    idle = memory(service.proc.pid)
    cells.warm(service.url, ["tag"])
    out: dict[str, Any] = {"memory_idle": idle, "cells": {}}
    for clients in args.clients:
        out["cells"][f"tag/c{clients}"] = cells.cell(service.url, "tag", clients, f"{name:10s}")
    loaded = out["memory"] = memory(service.proc.pid)
    say(f"{name:10s} memory: RSS {idle['rss_mib']} MiB idle, {loaded['rss_mib']} MiB after the load, peak "
        f"{loaded['peak_mib']} MiB ({loaded['processes']} processes)")  # fmt: skip
    return out


def runtime_ratios(services: dict[str, Any], clients: int) -> dict[str, float | None]:
    """Requests/s on ``/tag`` at ``clients`` clients, runtime / full, and resident memory after the load,
    full / runtime: against the full install on the same export and on the checkpoint (each pair that ran)."""
    rps = {name: s["cells"][f"tag/c{clients}"]["requests_per_s"] for name, s in services.items()}
    rss = {name: s["memory"]["rss_mib"] for name, s in services.items()}
    out = {}
    if "runtime" in services:
        for peer in [p for p in ("full", "checkpoint") if p in services]:
            out[f"rps_runtime_over_{peer}"] = ratio(rps["runtime"], rps[peer], 3)
            out[f"rss_{peer}_over_runtime"] = ratio(rss[peer], rss["runtime"], 3)
    say(f"/tag at {clients} clients, req/s: {rps}; RSS MiB: {rss} (full: the same export; checkpoint: eager)")
    return out
