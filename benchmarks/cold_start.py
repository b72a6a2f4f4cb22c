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
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import machine, say, write_json

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "fashion-products"
RETRIEVAL, TAGGING = "configs/retrieval/dual_encoder.yaml", "configs/tagging/cross_attention.yaml"


def make_catalogue(n: int, path: Path) -> None:
    """``n`` rows repeating the sample's rows under new ids."""
    df = pd.read_csv(SAMPLE / "metadata.csv", dtype=str, keep_default_na=False)
    rows = df.iloc[[i % len(df) for i in range(n)]].copy()
    rows["id"] = [f"p{i:07d}" for i in range(n)]
    rows.to_csv(path, index=False)


def make_checkpoint(config: str, catalogue: Path, path: Path) -> None:
    """A checkpoint as ``multimodal fit`` writes it (weights, stored config naming ``catalogue``, vocabularies)."""
    import torch

    from multimodal.lightning_cli import MultimodalCLI
    from multimodal.loading import CONFIG_KEY

    args = ["--config", config, "--data.manifest", str(catalogue), "--data.image_root", str(SAMPLE / "images")]
    if config == RETRIEVAL:
        args += ["--model.init_args.reranker", "null"]
    cli = MultimodalCLI(args=args, run=False)
    state: dict[str, Any] = {CONFIG_KEY: cli.parser.dump(cli.config, skip_none=False)}
    if hasattr(cli.model, "build_heads"):
        cli.model.build_heads(cli.datamodule.vocabularies, cli.datamodule.tag_vocabularies)
        cli.model.on_save_checkpoint(state)
    state["state_dict"] = cli.model.state_dict()
    torch.save(state, path)


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "multimodal.cli", *args]


def timed(cmd: list[str], cwd: Path) -> float:
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
    rows = np.arange(len(big)) % len(vectors)  # row i repeats sample row i mod 842, as make_catalogue did
    table = products.iloc[rows].reset_index(drop=True)
    table["id"] = big["id"].to_numpy()
    info = {"kind": "flat", "dim": int(vectors.shape[1]), "count": len(big), "export": {**manifest, "count": len(big)}}
    save_index(out, build_index(vectors[rows]), table, info, small_export / CHECKPOINT)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=100_000, help="rows of the large catalogue")
    p.add_argument("--repeats", type=int, default=5, help="runs of each timed command (median reported)")
    p.add_argument("--out", default="benchmarks/results/cold_start.json")
    p.add_argument("--work", default=None, help="working folder (default: a temporary one, removed)")
    args = p.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="cold-start-"))
    work.mkdir(parents=True, exist_ok=True)
    small, big = SAMPLE / "metadata.csv", work / "catalogue-100k.csv"
    say(f"set-up in {work}: a {args.rows}-row catalogue, checkpoints, exports, indexes")
    make_catalogue(args.rows, big)
    ckpts = {}
    for name, config, catalogue in (("retriever", RETRIEVAL, small), ("tagger_small", TAGGING, small),
                                    ("tagger_large", TAGGING, big)):  # fmt: skip
        ckpts[name] = work / f"{name}.ckpt"
        if not ckpts[name].is_file():
            make_checkpoint(config, catalogue, ckpts[name])
    if not (work / "emb" / "products.parquet").is_file():
        shutil.rmtree(work / "emb", ignore_errors=True)
        subprocess.run(command("export", "--ckpt_path", str(ckpts["retriever"]), "--out", str(work / "emb"),
                               "--no_progress"), cwd=work, check=True)  # fmt: skip
    subprocess.run(command("index", str(work / "emb"), "--out", str(work / "index-small")), cwd=work, check=True)
    large_index(work / "emb", big, work / "index-large")
    ten = work / "ten.csv"
    pd.read_csv(small, dtype=str).head(10)[["id", "image", "title"]].to_csv(ten, index=False)

    query = ["--text", "black leather watch for men", "-k", "10"]
    predict = ["--data.manifest", str(ten), "--data.image_root", str(SAMPLE / "images"), "--no_progress"]
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "import lightning, transformers, timm": [sys.executable, "-c", "import lightning, transformers, timm"],
        "multimodal --help": command("--help"),
        "multimodal predict --help": command("predict", "--help"),
        "multimodal search --help": command("search", "--help"),
        "multimodal index --help": command("index", "--help"),
        "search, 842 products": command("search", str(work / "index-small"), *query),
        f"search, {args.rows} products": command("search", str(work / "index-large"), *query),
        "predict 10, trained on 842": command("predict", "--ckpt_path", str(ckpts["tagger_small"]), *predict),
        f"predict 10, trained on {args.rows}": command("predict", "--ckpt_path", str(ckpts["tagger_large"]), *predict),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(args.repeats):  # alternate the cases, so slow moments of a shared box hit every case alike
        for name, cmd in cases.items():
            if name.startswith("predict"):
                out = work / f"pred-{r}-{len(times[name])}-{name.split()[-1]}.jsonl"
                cmd = [*cmd, "--out", str(out)]
            times[name].append(timed(cmd, work))
        say(f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()))
    median = {name: statistics.median(v) for name, v in times.items()}
    floor = median["import lightning, transformers, timm"]
    search_small, predict_small = median["search, 842 products"], median["predict 10, trained on 842"]
    ratios = {
        "search_large_over_small": median[f"search, {args.rows} products"] / search_small,
        "predict_large_over_small": median[f"predict 10, trained on {args.rows}"] / predict_small,
        "search_small_over_import_floor": median["search, 842 products"] / floor,
        "predict_small_over_import_floor": median["predict 10, trained on 842"] / floor,
    }
    print(f"\n{'command':42s} {'median s':>9s}   runs")
    for name, v in times.items():
        print(f"{name:42s} {median[name]:9.2f}   {' '.join(f'{x:.2f}' for x in v)}")
    print()
    for name, value in ratios.items():
        print(f"{name:42s} {value:9.3f}")
    help_ok = all(median[n] < 3.0 for n in median if n.endswith("--help"))
    within = ratios["search_large_over_small"] <= 1.2
    print(f"\n--help under 3 s: {help_ok}; cold search on {args.rows} within 1.2x of 842: {within}")
    write_json(
        args.out,
        {"machine": machine(), "rows": args.rows, "repeats": args.repeats, "seconds": times, "median_s": median,
         "ratios": ratios, "help_under_3s": help_ok},
    )  # fmt: skip
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
