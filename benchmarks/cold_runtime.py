"""The runtime install's rows of :mod:`benchmarks.cold_start`: the same cold commands on ONNX exports, run by the
runtime install's Python (``--runtime-venv``, built by ``python -m benchmarks.runtime_env``; without it, this Python
with torch and the training stack blocked, :func:`benchmarks.runtime_env.runtime_python`) beside the full install's
on the same exports, in the same run:

- ``multimodal --help``;
- one ``multimodal search --text ...`` on an index built from the retriever's ONNX export (the export records
  ``onnx_export``, so the runtime encodes the query with ONNX Runtime; the full install, torch importable, loads the
  retriever checkpoint the export links);
- one ``multimodal predict`` of 10 products with the tagger's ONNX export (the full install runs the same export on
  ONNX Runtime, after importing torch);
- ``multimodal serve --tagger <export>``: seconds from the start until ``/health`` answers ok;
- the import floors: what the runtime's search imports against ``import lightning, transformers, timm``.

The target: one cold search on the runtime install at least 5x faster than the full install's, and under 2 s.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx

from benchmarks.common import ratio, say
from benchmarks.harness import SAMPLE
from benchmarks.runtime_env import runtime_python
from benchmarks.service import free_port

FULL_FLOOR = "import lightning, transformers, timm"
# what a cold `multimodal search` imports on the runtime install before its first query (python -X importtime)
RUNTIME_FLOOR = "import numpy, pandas, pyarrow, onnxruntime, tokenizers, PIL, faiss"
SERVE_TIMEOUT_S = 300.0
# ratio name -> (the full install's row, the runtime's row)
PAIRS = {
    "help_full_over_runtime": ("multimodal --help", "runtime: multimodal --help"),
    "search_full_over_runtime": ("search, ONNX index, full install", "search, ONNX index, runtime"),
    "predict_full_over_runtime": ("predict 10, ONNX export, full install", "predict 10, ONNX export, runtime"),
    "serve_ready_full_over_runtime": ("serve ready, full install", "serve ready, runtime"),
    "import_floor_full_over_runtime": (FULL_FLOOR, f"runtime: {RUNTIME_FLOOR}"),
}
Case = tuple[list[str], dict[str, str]]  # a command and the environment it adds


@dataclass(frozen=True)
class Runtime:
    """The Python that runs the runtime rows, the environment it needs, and which of the two it is."""

    python: str
    env: dict[str, str]
    mode: str  # "venv": the runtime install's own venv; "blocked": this Python, heavy packages unimportable

    def command(self, *args: str) -> list[str]:
        return [self.python, "-m", "multimodal.cli", *args]


def runtime_of(venv: str | None) -> Runtime:
    """The runtime install of ``--runtime-venv``, or this Python with the heavy packages blocked; says which."""
    python, env = runtime_python(Path(venv).resolve() if venv else None)  # the commands run in another folder
    runtime = Runtime(python, env, "blocked" if env else "venv")
    where = f"the venv {venv}" if runtime.mode == "venv" else f"no venv at {venv}: this Python, torch blocked"
    say(f"runtime install: {where}")
    return runtime


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every timed command (offline Hugging Face, quiet tokenizers), ``extra`` merged in."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(extra or {})}


def set_up_runtime(cases: list[str], work: Path, small: Path) -> None:
    """The ONNX exports of the retriever and the small tagger and the index of the retriever's export, in ``work``
    (existing ones reused): nothing here is timed."""
    from benchmarks.smoke import index_of
    from multimodal.onnx.export import export_model

    if "runtime" in cases and "search" in cases:
        export_model(work / "retriever.ckpt", work / "retriever_onnx", progress=False)
        if not (work / "onnx" / "emb" / "products.parquet").is_file():
            index_of(work / "retriever_onnx", small, work / "onnx")
    if ("runtime" in cases and "predict" in cases) or "serve" in cases:
        export_model(work / "tagger_small.ckpt", work / "tagger_onnx", progress=False)


def runtime_cases(cases: list[str], work: Path, runtime: Runtime, ten: Path) -> dict[str, dict[str, Case]]:
    """The runtime rows and their full-install peers, by the group they follow (``floor``, ``help``, ``search``,
    ``predict``): each group's rows when ``runtime`` and that command are among ``cases``."""
    if "runtime" not in cases:
        return {}
    out = {"floor": {f"runtime: {RUNTIME_FLOOR}": ([runtime.python, "-c", RUNTIME_FLOOR], runtime.env)}}
    if "help" in cases:
        out["help"] = {"runtime: multimodal --help": (runtime.command("--help"), runtime.env)}
    if "search" in cases:
        query = ["search", str(work / "onnx" / "index"), "--text", "black leather watch for men", "-k", "10"]
        out["search"] = both("search, ONNX index", query, runtime)
    if "predict" in cases:
        predict = ["predict", "--ckpt_path", str(work / "tagger_onnx"), "--data.manifest", str(ten),
                   "--data.image_root", str(SAMPLE / "images"), "--no_progress"]  # fmt: skip
        out["predict"] = both("predict 10, ONNX export", predict, runtime)
    return out


def both(name: str, args: list[str], runtime: Runtime) -> dict[str, Case]:
    """``multimodal <args>`` on the full install (this Python, nothing blocked), then on the runtime install."""
    return {f"{name}, full install": ([sys.executable, "-m", "multimodal.cli", *args], {}),
            f"{name}, runtime": (runtime.command(*args), runtime.env)}  # fmt: skip


def serve_runs(cases: list[str], work: Path, runtime: Runtime) -> dict[str, Callable[[], float]]:
    """The ``serve`` rows (when ``serve`` is among ``cases``): a call of each times one start of the service."""
    if "serve" not in cases:
        return {}
    tagger = work / "tagger_onnx"
    return {"serve ready, full install": partial(serve_ready, sys.executable, {}, tagger, work),
            "serve ready, runtime": partial(serve_ready, runtime.python, runtime.env, tagger, work)}  # fmt: skip


def serve_ready(python: str, extra_env: dict[str, str], tagger: Path, work: Path) -> float:
    """Seconds from starting ``multimodal serve --tagger <tagger>`` (CPU, a free loopback port, its own process
    group) until ``/health`` answers ok; then it is stopped. Its log's tail is in the error when it fails."""
    port = free_port()
    log = work / f"serve-{port}.log"
    cmd = [python, "-m", "multimodal.cli", "serve", "--tagger", str(tagger), "--port", str(port),
           "--accelerator", "cpu"]  # fmt: skip
    with open(log, "wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=work, env=environment(extra_env), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        try:
            problem = healthy(proc, f"http://127.0.0.1:{port}/health", SERVE_TIMEOUT_S)
            seconds = time.perf_counter() - start
        finally:
            stop(proc)
    if problem is not None:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(cmd)}: {problem}; its log ends:\n{tail}")
    return seconds


def healthy(proc: subprocess.Popen, url: str, seconds: float) -> str | None:
    """Poll ``url`` every 0.05 s until it answers ok (None), or why not: the process exited, or the time ran out.
    (:func:`benchmarks.service.wait_healthy` polls every 0.5 s: too coarse for a start of a few seconds.)"""
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            return f"serve exited with {proc.returncode}"
        try:
            if httpx.get(url, timeout=2).text == "ok":
                return None
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    return f"/health did not answer ok in {seconds:g} s"


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the service; its whole process group killed if it lingers, or if workers outlive it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group: LitServe's workers, if any are left
    except ProcessLookupError:
        pass
    proc.wait()


def runtime_ratios(median: dict[str, float]) -> dict[str, float | None]:
    """Full install over runtime install, for each pair of rows this run timed."""
    return {name: ratio(median[a], median[b], 3) for name, (a, b) in PAIRS.items() if a in median and b in median}


def target(median: dict[str, float], ratios: dict[str, float | None]) -> dict[str, bool]:
    """The runtime's target for one cold search: >= 5x faster than the full install's, and under 2 s."""
    search = median.get(PAIRS["search_full_over_runtime"][1])
    if search is None:
        return {}
    return {"search_5x_faster": (ratios.get("search_full_over_runtime") or 0.0) >= 5.0, "search_under_2s": search < 2}
