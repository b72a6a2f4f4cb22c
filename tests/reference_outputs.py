"""Reference outputs of the three tasks, to show that a restructuring changes no behaviour.

    python tests/reference_outputs.py OUT          # fit the tiny configs (seed 0) on the committed sample, then
                                                   # write tags, vectors + search answers and captions under OUT
    python tests/reference_outputs.py --compare A B   # exit 1 when any output differs

Run it before a change (OUT = before/) and after it (after/), on the same machine and package versions, then
compare. Not a test of the default run: training on the same CPU gives the same bits, other CPUs need not.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "fashion-products"
TASKS = {"tagger": "tagging", "retriever": "retrieval", "captioner": "captioning"}


def fit(task: str, out: Path, steps: int) -> Path:
    from multimodal.cli import main

    main(["fit", "--config", str(ROOT / "configs" / TASKS[task] / "tiny.yaml"),
          "--data.init_args.manifest", str(SAMPLE / "metadata.csv"), "--data.init_args.image_root",
          str(SAMPLE / "images"), "--trainer.max_steps", str(steps), "--trainer.limit_val_batches", "0",
          "--trainer.num_sanity_val_steps", "0", "--trainer.enable_checkpointing", "true",
          "--trainer.default_root_dir", str(out / "runs" / task)])  # fmt: skip
    (ckpt,) = list((out / "runs" / task).rglob("*.ckpt"))
    return ckpt


def write(out: Path, steps: int, rows: int) -> None:
    """Fit each tiny config for ``steps`` steps, then write each task's outputs for the first ``rows`` products."""
    import contextlib
    import io

    import pandas as pd
    import torch

    from multimodal.cli import main

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=False)
    df = pd.read_csv(SAMPLE / "metadata.csv", dtype=str, keep_default_na=False).head(rows)
    manifest = out / "catalogue.csv"
    df.to_csv(manifest, index=False)
    common = ["--data.manifest", str(manifest), "--image_root", str(SAMPLE / "images"), "--no_progress"]
    ckpt = {task: fit(task, out, steps) for task in TASKS}
    main(["predict", "--ckpt_path", str(ckpt["tagger"]), *common, "--out", str(out / "tags.jsonl"), "--top_k", "3"])
    main(["caption", "--ckpt_path", str(ckpt["captioner"]), *common, "--out", str(out / "captions.jsonl"),
          "--min_new_tokens", "4", "--num_beams", "2"])  # fmt: skip
    main(["export", "--ckpt_path", str(ckpt["retriever"]), *common, "--out", str(out / "emb"),
          "--format", "npy", "--dtype", "float32"])  # fmt: skip
    main(["index", str(out / "emb"), "--out", str(out / "index"), "--lexical", "title"])
    answers = io.StringIO()
    with contextlib.redirect_stdout(answers):
        for query in (["--text", "black leather watch"], ["--like", str(df["id"].iat[0])],
                      ["--text", "blue shirt", "--mode", "hybrid"]):  # fmt: skip
            main(["search", str(out / "index"), *query, "-k", "10"])
    (out / "search.jsonl").write_text(answers.getvalue())


def compared(a: Path, b: Path) -> list[str]:
    """The outputs that differ between two reference folders."""
    names = ["tags.jsonl", "captions.jsonl", "search.jsonl", "emb/shard-000000.npy", "emb/products.parquet"]
    return [n for n in names if not (a / n).is_file() or not filecmp.cmp(a / n, b / n, shallow=False)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", nargs="?", type=Path, help="folder to write (must not exist)")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"), help="compare two reference folders")
    p.add_argument("--steps", type=int, default=20, help="training steps of each tiny config (default 20)")
    p.add_argument("--rows", type=int, default=60, help="products predicted (default 60)")
    args = p.parse_args()
    if args.compare:
        differ = compared(*args.compare)
        print("identical" if not differ else f"differ: {', '.join(differ)}")
        sys.exit(1 if differ else 0)
    if args.out is None:
        p.error("give OUT or --compare A B")
    write(args.out, args.steps, args.rows)


if __name__ == "__main__":
    main()
