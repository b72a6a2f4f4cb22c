"""Cold start: wall time of whole commands in fresh processes, on the 842-product sample and on a 100k-row catalogue.

A model is an artefact: loading it must not read its training catalogue, so a cold ``search`` or ``predict`` costs
the same whatever the catalogue's size. Timed, each in a new process, alternating small / large, median of repeats:

- ``multimodal --help`` and ``multimodal <command> --help`` (no torch import: the bar is 3 s);
- one ``multimodal search <index> --text ...`` on an index of the sample (842 products) and of 100k products;
- one ``multimodal predict`` of 10 products with a tagger whose training catalogue is the sample and one whose
  training catalogue is the 100k-row manifest (the old loader re-read and checked it: about 30 s per 100k rows);
- the limit, in the same run: ``python -c "import lightning, transformers, timm"`` (what any command that builds a
  LightningModule must import) and ``python -c "pass"``;
- with ``--cases runtime`` and ``serve``, the runtime install (``pip install multimodal-products``, no torch) on ONNX
  exports beside the full install on the same exports (:mod:`benchmarks.cold_runtime`): ``--help``, one search, one
  predict of 10, the seconds until ``multimodal serve`` answers ``/health``, and the runtime's import floor.

The 100k catalogue repeats the sample's photos and titles under new ids. The models are the real configs
(EfficientNet-Lite0 + MiniLM-L6, untrained heads: speed does not depend on training). The 100k index holds the
sample export's vectors repeated: a product whose photo repeats a sample photo has the same image vector
(``product: image``), so this is the index an export of the 100k rows computes, without 20 CPU minutes of export.

    python -m benchmarks.cold_start --runtime-venv runs/runtime-venv --out benchmarks/results/cold_start.json
"""

from __future__ import annotations

import argparse
import itertools
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.cold_runtime import (
    FULL_FLOOR,
    Case,
    Runtime,
    environment,
    runtime_cases,
    runtime_of,
    runtime_ratios,
    serve_runs,
    set_up_runtime,
    target,
)
from benchmarks.common import machine, ratio, say, write_json
from benchmarks.harness import SAMPLE, TINY, parse
from benchmarks.smoke import config_checkpoint, index_of, sample_rows
from benchmarks.synthetic import repeated_catalogue
from benchmarks.timing import rounds

RETRIEVAL, TAGGING = "configs/retrieval/dual_encoder.yaml", "configs/tagging/cross_attention.yaml"
CASES = ("help", "search", "predict", "runtime", "serve")
# --smoke: the tiny configs, 40 and 200 products, one run of the help and search commands, on both installs
SMOKE = {"rows": 200, "sample_rows": 40, "repeats": 1, "cases": ["help", "search", "runtime"],
         "tagging_config": TINY["tagging"], "retrieval_config": TINY["retrieval"]}  # fmt: skip


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "multimodal.cli", *args]


def timed(cmd: list[str], cwd: Path, extra_env: dict[str, str] | None = None) -> float:
    """Wall seconds of ``cmd`` in a new process (``extra_env`` added to its environment); its error output when it
    fails."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=environment(extra_env), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return seconds


def large_index(small_export: Path, big_catalogue: Path, out: Path) -> None:
    """The index of the 100k-row catalogue, from the sample export's vectors repeated in the catalogue's order."""
    from multimodal.search.build import build_index
    from multimodal.search.export import CHECKPOINT, load_export
    from multimodal.search.index import save_index

    manifest, vectors, products = load_export(small_export)
    big = pd.read_csv(big_catalogue, dtype=str, keep_default_na=False)
    rows = np.arange(len(big)) % len(vectors)  # row i repeats small row i mod its size, as the catalogue did
    table = products.iloc[rows].reset_index(drop=True)
    table["id"] = big["id"].to_numpy()
    info = {"kind": "flat", "dim": int(vectors.shape[1]), "count": len(big), "export": {**manifest, "count": len(big)}}
    save_index(out, build_index(vectors[rows]), table, info, small_export / CHECKPOINT)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cold_start", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--rows", type=int, default=100_000, help="rows of the large catalogue")
    p.add_argument("--sample-rows", type=int, default=0, help="rows of the small catalogue (0: the whole sample)")
    p.add_argument("--repeats", type=int, default=5, help="runs of each timed command (median reported)")
    p.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES),
                   help="commands timed; runtime: the chosen ones (help, search, predict) also on the runtime install "
                   "and the full install on ONNX exports; serve: the seconds until serve answers, on both")  # fmt: skip
    p.add_argument(
        "--runtime-venv",
        default="runs/runtime-venv",
        help="the runtime install (python -m benchmarks.runtime_env); missing: this Python, torch blocked",
    )
    p.add_argument("--tagging-config", default=TAGGING, help="model of the predict commands")
    p.add_argument("--retrieval-config", default=RETRIEVAL, help="model of the search commands")
    p.add_argument("--out", default="benchmarks/results/cold_start.json")
    p.add_argument("--work", default=None, help="working folder (default: a temporary one, removed)")
    return parse(p, argv, SMOKE, "benchmarks.cold_start")


def set_up(args: argparse.Namespace, work: Path) -> Path:
    """Catalogues (small, large), checkpoints and indexes in ``work``: nothing here is timed. Returns the small
    catalogue."""
    small = SAMPLE / "metadata.csv" if not args.sample_rows else sample_rows(args.sample_rows, work / "small.csv")
    big = work / f"catalogue-{args.rows}.csv"
    say(f"set-up in {work}: a {args.rows}-row catalogue, checkpoints, exports, indexes")
    repeated_catalogue(args.rows, small, big)
    ckpts: dict[str, Path] = {}
    models = [("retriever", args.retrieval_config, small)] if "search" in args.cases else []
    if "predict" in args.cases or "serve" in args.cases:
        models += [("tagger_small", args.tagging_config, small)]
    if "predict" in args.cases:
        models += [("tagger_large", args.tagging_config, big)]
    for name, config, catalogue in models:
        ckpts[name] = work / f"{name}.ckpt"
        if not ckpts[name].is_file():
            config_checkpoint(config, catalogue, SAMPLE / "images", ckpts[name])
    if "search" in args.cases:
        if not (work / "small" / "emb" / "products.parquet").is_file():
            shutil.rmtree(work / "small", ignore_errors=True)
            index_of(ckpts["retriever"], small, work / "small")
        large_index(work / "small" / "emb", big, work / "index-large")
    set_up_runtime(args.cases, work, small)
    return small


def cases_of(args: argparse.Namespace, work: Path, small: Path, runtime: Runtime) -> dict[str, Case]:
    """The commands timed, by name, with the environment each adds (the import floors always, the others by
    ``--cases``); each runtime row follows its full-install peers."""
    ckpts, rows = {name: work / f"{name}.ckpt" for name in ("tagger_small", "tagger_large")}, args.rows
    n = len(pd.read_csv(small, dtype=str))
    ten = work / "ten.csv"
    pd.read_csv(small, dtype=str).head(10)[["id", "image", "title"]].to_csv(ten, index=False)
    extra = runtime_cases(args.cases, work, runtime, ten)
    cases: dict[str, Case] = {"python -c pass": ([sys.executable, "-c", "pass"], {})}
    cases |= {FULL_FLOOR: ([sys.executable, "-c", FULL_FLOOR], {}), **extra.get("floor", {})}
    if "help" in args.cases:
        cases.update({f"multimodal {c} --help".replace("  ", " "): (command(*c.split(), "--help"), {})
                      for c in ("", "predict", "search", "index")})  # fmt: skip
        cases.update(extra.get("help", {}))
    if "search" in args.cases:
        query = ["--text", "black leather watch for men", "-k", "10"]
        cases[f"search, {n} products"] = (command("search", str(work / "small" / "index"), *query), {})
        cases[f"search, {rows} products"] = (command("search", str(work / "index-large"), *query), {})
        cases.update(extra.get("search", {}))
    if "predict" in args.cases:
        predict = ["--data.manifest", str(ten), "--data.image_root", str(SAMPLE / "images"), "--no_progress"]
        for trained_on, ckpt in ((n, "tagger_small"), (rows, "tagger_large")):
            cases[f"predict 10, trained on {trained_on}"] = (command("predict", "--ckpt_path", str(ckpts[ckpt]),
                                                                      *predict), {})  # fmt: skip
        cases.update(extra.get("predict", {}))
    return cases


def run_case(name: str, case: Case, work: Path, runs: Iterator[int]) -> float:
    """Seconds of one run of case ``name``; a predict run writes a file of its own."""
    cmd, extra_env = case
    if name.startswith("predict"):
        slug = re.sub(r"\W+", "-", name)
        cmd = [*cmd, "--out", str(work / f"pred-{next(runs)}-{slug}.jsonl")]
    return timed(cmd, work, extra_env)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="cold-start-")).resolve()  # the commands run inside it
    work.mkdir(parents=True, exist_ok=True)
    runtime = runtime_of(args.runtime_venv)
    small = set_up(args, work)
    cases = cases_of(args, work, small, runtime)
    runs = {name: partial(run_case, name, case, work, itertools.count()) for name, case in cases.items()}
    runs |= serve_runs(args.cases, work, runtime)

    def after(r: int, times: dict[str, list[float]]) -> None:
        say(f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()))

    # the cases alternate (A B C, C B A, ...): a slow moment hits them alike
    times = rounds(runs, args.repeats, alternate=True, after=after)
    median = {name: statistics.median(v) for name, v in times.items()}
    report(args, times, median, small, runtime.mode)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


def report(
    args: argparse.Namespace, times: dict[str, list[float]], median: dict[str, float], small: Path, mode: str
) -> None:
    """Print the medians and the ratios; write --out."""
    n, rows = len(pd.read_csv(small, dtype=str)), args.rows
    floor = median[FULL_FLOOR]
    pairs = {
        "search_large_over_small": (f"search, {rows} products", f"search, {n} products"),
        "predict_large_over_small": (f"predict 10, trained on {rows}", f"predict 10, trained on {n}"),
        "search_small_over_import_floor": (f"search, {n} products", None),
        "predict_small_over_import_floor": (f"predict 10, trained on {n}", None),
    }
    ratios = {name: ratio(median[a], median[b] if b else floor, 3) for name, (a, b) in pairs.items() if a in median}
    ratios |= runtime_ratios(median)
    width = max(42, *map(len, times))
    print(f"\n{'command':{width}s} {'median s':>9s}   runs")
    for name, v in times.items():
        print(f"{name:{width}s} {median[name]:9.2f}   {' '.join(f'{x:.2f}' for x in v)}")
    print(f"\nruntime rows: {args.runtime_venv if mode == 'venv' else 'this Python, torch blocked'} ({mode})")
    for name, value in ratios.items():
        print(f"{name:{width}s} {'-' if value is None else f'{value:9.3f}'}")
    help_ok = all(median[name] < 3.0 for name in median if name.endswith("--help"))
    within = ratios.get("search_large_over_small", float("inf")) <= 1.2
    print(f"\n--help under 3 s: {help_ok}" + (f"; cold search on {rows} within 1.2x of {n}: {within}"
                                              if "search" in args.cases else ""))  # fmt: skip
    goal = target(median, ratios)
    if goal:
        print(f"target, one cold search on the runtime install: >= 5x faster than the full install's: "
              f"{goal['search_5x_faster']}; under 2 s: {goal['search_under_2s']}")  # fmt: skip
    write_json(
        args.out,
        {"machine": machine(), "rows": rows, "small_rows": n, "repeats": args.repeats, "cases": args.cases,
         "runtime": {"venv": args.runtime_venv, "mode": mode}, "seconds": times, "median_s": median,
         "ratios": ratios, "help_under_3s": help_ok, "runtime_target": goal},
    )  # fmt: skip


if __name__ == "__main__":
    main()
