"""Cold start: wall time of whole commands in fresh processes, on the 842-product sample and on a 100k-row catalogue.

A model is an artefact: loading it must not read its training catalogue, so a cold ``search`` or ``predict`` costs
the same whatever the catalogue's size. Timed, each in a new process, alternating small / large, median of repeats:

- ``multimodal --help`` and ``multimodal <command> --help`` (no torch import: the bar is 3 s);
- one ``multimodal search <index> --text ...`` on an index of the sample (842 products) and of 100k products;
- one ``multimodal predict`` of 10 products with a tagger whose training catalogue is the sample and one whose
  training catalogue is the 100k-row manifest (the old loader re-read and checked it: about 30 s per 100k rows);
- the limit, in the same run: ``python -c "import lightning, transformers, timm"`` (what any command that builds a
  LightningModule must import) and ``python -c "pass"``.

The 100k catalogue repeats the sample's photos and titles under new ids. The models are the real configs
(EfficientNet-Lite0 + MiniLM-L6, untrained heads: speed does not depend on training). The 100k index holds the
sample export's vectors repeated: a product whose photo repeats a sample photo has the same image vector
(``product: image``), so this is the index an export of the 100k rows computes, without 20 CPU minutes of export.

    python -m benchmarks.cold_start --out benchmarks/results/cold_start.json
"""

from __future__ import annotations

import argparse
import itertools
import os
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

from benchmarks.common import machine, ratio, say, write_json
from benchmarks.harness import SAMPLE, TINY, parse
from benchmarks.smoke import config_checkpoint, index_of, sample_rows
from benchmarks.synthetic import repeated_catalogue
from benchmarks.timing import rounds

RETRIEVAL, TAGGING = "configs/retrieval/dual_encoder.yaml", "configs/tagging/cross_attention.yaml"
CASES = ("help", "search", "predict")
# --smoke: the tiny configs, 40 and 200 products, one run of the help and search commands
SMOKE = {"rows": 200, "sample_rows": 40, "repeats": 1, "cases": ["help", "search"], "tagging_config": TINY["tagging"],
         "retrieval_config": TINY["retrieval"]}  # fmt: skip


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "multimodal.cli", *args]


def timed(cmd: list[str], cwd: Path) -> float:
    """Wall seconds of ``cmd`` in a new process; its error output when it fails."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
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
    p.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES), help="commands timed")
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
    if "predict" in args.cases:
        models += [("tagger_small", args.tagging_config, small), ("tagger_large", args.tagging_config, big)]
    for name, config, catalogue in models:
        ckpts[name] = work / f"{name}.ckpt"
        if not ckpts[name].is_file():
            config_checkpoint(config, catalogue, SAMPLE / "images", ckpts[name])
    if "search" in args.cases:
        if not (work / "small" / "emb" / "products.parquet").is_file():
            shutil.rmtree(work / "small", ignore_errors=True)
            index_of(ckpts["retriever"], small, work / "small")
        large_index(work / "small" / "emb", big, work / "index-large")
    return small


def cases_of(args: argparse.Namespace, work: Path, small: Path) -> dict[str, list[str]]:
    """The commands timed, by name (the import floor always, the others by ``--cases``)."""
    ckpts, rows = {name: work / f"{name}.ckpt" for name in ("tagger_small", "tagger_large")}, args.rows
    n = len(pd.read_csv(small, dtype=str))
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "import lightning, transformers, timm": [sys.executable, "-c", "import lightning, transformers, timm"],
    }
    if "help" in args.cases:
        cases.update({f"multimodal {c} --help".replace("  ", " "): command(*c.split(), "--help")
                      for c in ("", "predict", "search", "index")})  # fmt: skip
    if "search" in args.cases:
        query = ["--text", "black leather watch for men", "-k", "10"]
        cases[f"search, {n} products"] = command("search", str(work / "small" / "index"), *query)
        cases[f"search, {rows} products"] = command("search", str(work / "index-large"), *query)
    if "predict" in args.cases:
        ten = work / "ten.csv"
        pd.read_csv(small, dtype=str).head(10)[["id", "image", "title"]].to_csv(ten, index=False)
        predict = ["--data.manifest", str(ten), "--data.image_root", str(SAMPLE / "images"), "--no_progress"]
        cases[f"predict 10, trained on {n}"] = command("predict", "--ckpt_path", str(ckpts["tagger_small"]), *predict)
        cases[f"predict 10, trained on {rows}"] = command("predict", "--ckpt_path", str(ckpts["tagger_large"]),
                                                          *predict)  # fmt: skip
    return cases


def run_case(name: str, cmd: list[str], work: Path, runs: Iterator[int]) -> float:
    """Seconds of one run of case ``name``; a predict run writes a file of its own."""
    if name.startswith("predict"):
        cmd = [*cmd, "--out", str(work / f"pred-{next(runs)}-{name.split()[-1]}.jsonl")]
    return timed(cmd, work)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="cold-start-"))
    work.mkdir(parents=True, exist_ok=True)
    small = set_up(args, work)
    cases = cases_of(args, work, small)
    runs = {name: partial(run_case, name, cmd, work, itertools.count()) for name, cmd in cases.items()}

    def after(r: int, times: dict[str, list[float]]) -> None:
        say(f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()))

    times = rounds(runs, args.repeats, after=after)  # the cases alternate: a slow moment hits them alike
    median = {name: statistics.median(v) for name, v in times.items()}
    report(args, times, median, small)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


def report(args: argparse.Namespace, times: dict[str, list[float]], median: dict[str, float], small: Path) -> None:
    """Print the medians and the ratios; write --out."""
    n, rows = len(pd.read_csv(small, dtype=str)), args.rows
    floor = median["import lightning, transformers, timm"]
    pairs = {
        "search_large_over_small": (f"search, {rows} products", f"search, {n} products"),
        "predict_large_over_small": (f"predict 10, trained on {rows}", f"predict 10, trained on {n}"),
        "search_small_over_import_floor": (f"search, {n} products", None),
        "predict_small_over_import_floor": (f"predict 10, trained on {n}", None),
    }
    ratios = {name: ratio(median[a], median[b] if b else floor, 3) for name, (a, b) in pairs.items() if a in median}
    print(f"\n{'command':42s} {'median s':>9s}   runs")
    for name, v in times.items():
        print(f"{name:42s} {median[name]:9.2f}   {' '.join(f'{x:.2f}' for x in v)}")
    print()
    for name, value in ratios.items():
        print(f"{name:42s} {'-' if value is None else f'{value:9.3f}'}")
    help_ok = all(median[name] < 3.0 for name in median if name.endswith("--help"))
    within = ratios.get("search_large_over_small", float("inf")) <= 1.2
    print(f"\n--help under 3 s: {help_ok}; cold search on {rows} within 1.2x of {n}: {within}")
    write_json(
        args.out,
        {"machine": machine(), "rows": rows, "small_rows": n, "repeats": args.repeats, "seconds": times,
         "median_s": median, "ratios": ratios, "help_under_3s": help_ok},
    )  # fmt: skip


if __name__ == "__main__":
    main()
