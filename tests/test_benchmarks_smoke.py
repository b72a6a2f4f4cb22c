"""Every benchmark program still runs from the tree: ``--help`` answers, and ``--smoke`` (tiny sizes and models, the
committed sample) exits 0 and writes its comparison ratios beside the machine's load average, never over the
published results. The load cells of ``serve_load`` count failed requests by reason and give no rate, not a
division by zero, when nothing was answered."""

from __future__ import annotations

import hashlib
import http.server
import importlib
import json
import math
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import ROOT

BENCHMARKS = [
    "caption_quality",
    "caption_rerank_grid",
    "caption_speed",
    "catalogue_io",
    "distributed",
    "cold_start",
    "export_speed",
    "inference_speed",
    "question_answering",
    "retrieval_quality",
    "runtime_env",
    "search_speed",
    "serve_load",
    "shard_simulation",
    "stream_training",
    "tagging_quality",
    "train_overhead",
]
# Quality benchmarks divide by a score that tiny, barely trained models may leave at 0 (then the ratio is null);
# speed, memory and recall ratios of a run always have a number.
QUALITY = {"caption_quality", "caption_rerank_grid", "question_answering", "retrieval_quality", "tagging_quality"}
RESULTS = ROOT / "benchmarks" / "results"


def test_every_benchmark_program_is_listed() -> None:
    programs = {p.stem for p in (ROOT / "benchmarks").glob("*.py")}
    helpers = {"__init__", "common", "harness", "smoke", "http_load", "service", "synthetic", "timing"}
    helpers |= {"catalogue_data", "photo_server"}  # large manifests and a loopback photo server, for benchmarks
    helpers |= {"serve_runtime", "cold_runtime"}  # serve_load's runtime-install services, cold_start's rows
    assert programs - helpers == set(BENCHMARKS)


def test_declared_options_parse_as_argparse_would() -> None:
    from benchmarks.harness import Option, parser

    options = {"--n": Option(3), "--xs": Option([1.0]), "--files": Option([], metavar="JSON"), "--on": Option(False),
               "--cap": Option(None, type=int), "--out": Option("o.json", "result file")}  # fmt: skip
    p = parser("x", "A program.", options)
    args = p.parse_args(["--n", "4", "--xs", "2", "3", "--files", "a.json", "--on", "--cap", "5"])
    assert (args.n, args.xs, args.files, args.on, args.cap, args.out) == (4, [2.0, 3.0], ["a.json"], True, 5, "o.json")
    default = p.parse_args([])
    assert (default.n, default.xs, default.files, default.on, default.cap) == (3, [1.0], [], False, None)


def published() -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(RESULTS.glob("*.json"))}


@pytest.mark.parametrize("name", BENCHMARKS)
def test_help_answers(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    program = importlib.import_module(f"benchmarks.{name}")
    with pytest.raises(SystemExit) as exc:
        program.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "--smoke" in text and "--out" in text, text


@pytest.mark.parametrize("name", BENCHMARKS)
def test_smoke_run_writes_ratios_and_load_average(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, torch_state: None
) -> None:
    monkeypatch.chdir(ROOT)
    before, out = published(), tmp_path / f"{name}.json"
    importlib.import_module(f"benchmarks.{name}").main(["--smoke", "--out", str(out)])
    payload = json.loads(out.read_text())
    ratios = payload["ratios"]
    assert ratios, payload.keys()
    for key, value in ratios.items():
        assert value is None or (isinstance(value, float | int) and math.isfinite(value)), (key, value)
        assert value is not None or name in QUALITY, (key, ratios)
    load = payload["load_average"]
    for moment in ("start", "end"):
        assert set(load[moment]) == {"1min", "5min", "15min"} and min(load[moment].values()) >= 0, load
    assert f"benchmarks.{name} --smoke" in payload["machine"]["command"]
    assert published() == before, "a smoke run changed benchmarks/results/"


def test_smoke_results_are_not_written_into_the_published_results(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import search_speed

    before = published()
    with pytest.raises(SystemExit) as exc:
        search_speed.main(["--smoke", "--out", str(RESULTS / "search_speed.json")])
    assert exc.value.code == 2 and "not published" in capsys.readouterr().err
    assert published() == before


class Answers(http.server.BaseHTTPRequestHandler):
    """/search answers 200; /tag answers 504 as LitServe does for a request that waited past its timeout."""

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self.answer(200, {"hits": []})

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        self.answer(504, {"detail": "Request timed out"})

    def answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def service_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_failed_requests_are_counted_by_reason_and_a_silent_cell_has_no_rate(service_url: str) -> None:
    import asyncio
    import types

    from benchmarks.http_load import Requests, load
    from benchmarks.serve_load import median_cell, report

    requests = Requests()
    mixed = asyncio.run(load(service_url, requests, ["search", "tag"] * 3, 2))
    assert (mixed["requests"], mixed["answered"], mixed["failed"]) == (6, 3, 3)
    assert mixed["failure_reasons"] == {"HTTP 504 Request timed out": 3}
    assert mixed["requests_per_s"] > 0 and mixed["p50_ms"] is not None
    silent = median_cell([asyncio.run(load(service_url, requests, ["tag"] * 4, 2))])
    assert silent["answered"] == 0 and silent["failed"] == 4
    assert silent["requests_per_s"] is None and silent["p50_ms"] is None and "no request answered" in silent["note"]
    args = types.SimpleNamespace(batch_sizes=[1, 32], clients=[2], out="")
    cells = {"tag/b1/c2": silent, "tag/b32/c2": median_cell([mixed])}
    results = {"cells": cells, "memory": {"run": mixed}}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("benchmarks.serve_load.write_json", lambda path, payload: None)
        report(args, results)  # type: ignore[arg-type]
    assert results["ratios"] == {"tag/c2": None}
    assert results["failed_total"] == 4 + 3 + 3
    assert results["failure_reasons"] == {"HTTP 504 Request timed out": 10}


def test_retrieval_cache_reads_back_what_it_stored_and_keys_by_inputs(tmp_path: Path) -> None:
    from benchmarks.quality.retrieval_cache import cached, key_of

    calls: list[int] = []

    def compute() -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(1)
        return torch.arange(3), torch.ones(2, 2)

    first = cached(str(tmp_path), "texts", key_of(["a", "b"]), compute)
    again = cached(str(tmp_path), "texts", key_of(["a", "b"]), compute)
    assert len(calls) == 1 and all(torch.equal(x, y) for x, y in zip(first, again, strict=True))
    cached(str(tmp_path), "texts", key_of(["a", "c"]), compute)  # other texts: computed, not read
    cached("", "texts", key_of(["a", "b"]), compute)  # no cache folder: always computed
    assert len(calls) == 3 and len(list(tmp_path.glob("texts-*.pt"))) == 2 and not list(tmp_path.glob("*.tmp"))
