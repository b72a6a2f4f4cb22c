"""Training data read in one streaming pass: a Parquet dataset folder trains exactly as the same rows in one CSV file,
and a million-row manifest builds its data module in the memory of a ten-thousand-row one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from conftest import ROOT, SAMPLE_IMAGES, fit_tiny

import multimodal
from benchmarks.catalogue_data import write_repeated_manifest
from multimodal.data.datamodule import ProductDataModule

COLUMNS = {"text_columns": ["title"], "attributes": ["gender", "masterCategory", "season"]}  # the tiny tagger's


def records(dm: ProductDataModule) -> dict[str, list[dict]]:
    return {s: [vars(r) for r in recs] for s, recs in dm.splits.items()}


def test_parquet_dataset_folder_trains_as_the_same_rows_in_csv(tmp_path: Path, sample_df: pd.DataFrame) -> None:
    """Three Parquet files read in path order are one manifest: the same splits (by the id hash), records,
    vocabularies and data report as the CSV file, and a 2-step fit gives the same weights and predictions."""
    df = sample_df.iloc[::17].head(48).reset_index(drop=True)
    df.loc[5, "image"] = f"{df.image[5]}|gone.jpg"  # a missing photo beside a found one: left out of the record
    csv = tmp_path / "catalogue.csv"
    df.to_csv(csv, index=False)
    folder = tmp_path / "catalogue"
    folder.mkdir()
    for k, part in enumerate(np.array_split(np.arange(len(df)), 3)):
        df.iloc[part].to_parquet(folder / f"part-{k}.parquet", index=False)
    (folder / "_SUCCESS").write_text("")  # beside a dataset written by Spark: not a part
    dms = [ProductDataModule(str(p), image_root=str(SAMPLE_IMAGES), num_workers=0, **COLUMNS) for p in (csv, folder)]
    assert records(dms[1]) == records(dms[0]) and min(len(v) for v in dms[0].splits.values()) > 0
    assert dms[1].splits["train"][0].row == dms[0].splits["train"][0].row
    (partly,) = [r for recs in dms[1].splits.values() for r in recs if r.row == 5]
    assert partly.photos == [df.image[5].split("|")[0]]
    assert (dms[1].vocabularies, dms[1].tag_vocabularies) == (dms[0].vocabularies, dms[0].tag_vocabularies)
    reports = [json.dumps({k: v for k, v in dm.report().items() if k != "manifest"}) for dm in dms]
    assert reports[1].replace(f"{folder} row", f"{csv} row") == reports[0] and f"{csv} row 5 (id" in reports[0]
    ckpts = [fit_tiny("tagger", tmp_path / f"run-{k}", p, SAMPLE_IMAGES) for k, p in enumerate((csv, folder))]
    weights = [torch.load(c, map_location="cpu", weights_only=True)["state_dict"] for c in ckpts]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    products = df.iloc[6:12].assign(image=[str(SAMPLE_IMAGES / i) for i in df.image[6:12]]).to_dict("records")
    rows = [multimodal.load(c).run(products) for c in ckpts]
    assert rows[1] == rows[0] and len(rows[0]) == 6


_BUILD = """
import json, sys
from multimodal.data.datamodule import ProductDataModule
dm = ProductDataModule(sys.argv[1], image_root=sys.argv[2], text_columns=["title"], attributes=["gender"],
                       num_workers=0)
ends = [dm.splits[s][i].id for s in ("train", "val", "test") for i in (0, -1)]  # decoded lazily, a chunk each
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
hwm = int(status["VmHWM"].split()[0]) // 1024
print(json.dumps({"rows": {s: len(v) for s, v in dm.splits.items()}, "ends": ends, "vmhwm_mb": hwm}))
"""


def test_a_million_row_manifest_builds_in_the_memory_of_ten_thousand(tmp_path: Path, sample_df: pd.DataFrame) -> None:
    """Splits, id checks, photo checks, vocabularies and the report in one pass over 1,000,000 rows keep nothing per
    row but its row number: peak RSS within 80 MB of the same over 10,000 rows (each in its own process)."""
    src = tmp_path / "sample.csv"
    pattern = np.array(["train", "train", "val", "test"])[np.arange(len(sample_df)) % 4]
    sample_df.assign(split=pattern).to_csv(src, index=False)
    paths = {n: write_repeated_manifest(src, tmp_path / f"rows-{n}.parquet", n) for n in (10_000, 1_000_000)}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {  # both at once: most of each run is importing torch and Lightning
        n: subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(_BUILD), str(p), str(SAMPLE_IMAGES)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for n, p in paths.items()
    }
    out = {}
    for n, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-2000:]
        out[n] = json.loads(stdout.splitlines()[-1])
    small, big = out[10_000], out[1_000_000]
    print(f"peak RSS: {small['vmhwm_mb']} MB over 10,000 rows, {big['vmhwm_mb']} MB over 1,000,000 rows")
    for n, found in out.items():
        splits = pattern[np.arange(n) % len(sample_df)]  # row i repeats sample row i % len, with the id "<id>-<i>"
        assert found["rows"] == {s: int((splits == s).sum()) for s in ("train", "val", "test")}
        ends = [int(np.flatnonzero(splits == s)[k]) for s in ("train", "val", "test") for k in (0, -1)]
        assert found["ends"] == [f"{sample_df.id[i % len(sample_df)]}-{i}" for i in ends]
    assert big["vmhwm_mb"] - small["vmhwm_mb"] <= 80


def test_a_manifest_url_reads_as_the_local_file(tmp_path: Path, sample_df: pd.DataFrame) -> None:
    """``data.manifest`` may be any fsspec URL (here ``memory://``, as ``s3://`` would be): the same records as the
    local file; the manifest stays text, and relative photos default to the URL's folder."""
    import fsspec

    df = sample_df.head(40)
    df.to_csv(tmp_path / "local.csv", index=False)
    with fsspec.open("memory://shop/streamed-training/catalog.csv", "w") as f:
        df.to_csv(f, index=False)
    url, local = ("memory://shop/streamed-training/catalog.csv", tmp_path / "local.csv")
    dms = [ProductDataModule(str(p), image_root=str(SAMPLE_IMAGES), num_workers=0, **COLUMNS) for p in (url, local)]
    assert records(dms[0]) == records(dms[1]) and dms[0].manifest == url and dms[1].manifest == local
    assert ProductDataModule(url, num_workers=0, **COLUMNS).image_root == "memory://shop/streamed-training/"
