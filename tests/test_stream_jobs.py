"""Batch jobs over streamed manifests: ``predict`` (tagger), ``export`` (retriever) and ``caption`` (captioner) read
a JSONL file or a Parquet dataset folder row chunk by row chunk and write what they write for the same rows as CSV,
with the same per-row errors, the same job identity (a job begun on the same rows resumes) and the same resuming
after a kill."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SAMPLE_IMAGES, cli_error, kill_9_after_blocks

from multimodal.cli import main
from multimodal.data.manifest import clean_value
from multimodal.search.export import ids_sha256

TASKS = ("tagger", "retriever", "captioner")
FORMATS = ("csv", "jsonl", "parquet")


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory, sample_df: pd.DataFrame) -> dict[str, Path]:
    """14 sample products as CSV, JSONL and a Parquet dataset of 3 files (year an integer column there); row 5 has
    an empty id, the last row repeats row 0's id. Photos in ``images``."""
    folder = tmp_path_factory.mktemp("stream-jobs")
    (folder / "images").mkdir()
    df = sample_df.iloc[3::23].head(13)[["id", "image", "title", "articleType", "year"]].reset_index(drop=True)
    for name in df["image"]:
        shutil.copy(SAMPLE_IMAGES / name, folder / "images" / name)
    df.loc[5, "id"] = ""
    df = pd.concat([df, df.iloc[[0]]], ignore_index=True)
    df.to_csv(folder / "m.csv", index=False)
    records = [
        {**r, "id": r["id"] or None, "year": int(r["year"]) if r["year"] else None} for r in df.to_dict("records")
    ]
    (folder / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "parts").mkdir()
    for n, (a, b) in enumerate([(0, 5), (5, 9), (9, len(records))]):
        pq.write_table(pa.Table.from_pylist(records[a:b]), folder / "parts" / f"part-{n}.parquet")
    return {
        "csv": folder / "m.csv",
        "jsonl": folder / "m.jsonl",
        "parquet": folder / "parts",
        "images": folder / "images",
    }


def job_args(task: str, ckpt: Path, manifest: Path, images: Path, out: Path, *extra: str) -> list[str]:
    command = {"tagger": "predict", "retriever": "export", "captioner": "caption"}[task]
    return [command, "--ckpt_path", str(ckpt), "--data.manifest", str(manifest), "--data.image_root", str(images),
            "--out", str(out), "--batch_size", "2", "--block_size", "4", "--no_progress", *extra]  # fmt: skip


def output(task: str, out: Path, manifest: Path) -> tuple[bytes, dict]:
    """The job's output bytes (an export's products table and vectors) with the manifest's name made neutral, and
    its job identity."""
    if task == "retriever":
        export = json.loads((out / "export.json").read_text())
        skipped = json.dumps(export["skipped"]).replace(str(manifest), "MANIFEST").encode()
        vectors = b"".join(p.read_bytes() for p in sorted(out.glob("shard-*.safetensors")))
        return (out / "products.parquet").read_bytes() + vectors + skipped, json.loads((out / "job.json").read_text())
    job = json.loads((out.parent / f".{out.name}.job" / "job.json").read_text())
    return out.read_text().replace(str(manifest), "MANIFEST").encode(), job


@pytest.mark.parametrize("task", TASKS)
def test_jsonl_and_parquet_dataset_give_the_csv_output(
    task: str, trained: dict[str, Path], catalogue: dict[str, Path], tmp_path: Path
) -> None:
    got = {}
    for fmt in FORMATS:
        out = tmp_path / (f"{fmt}" if task == "retriever" else f"{fmt}.jsonl")
        main(job_args(task, trained[task], catalogue[fmt], catalogue["images"], out))
        got[fmt] = output(task, out, catalogue[fmt])
    ids = [clean_value(i) or "" for i in pd.read_csv(catalogue["csv"], dtype=str, keep_default_na=False)["id"]]
    for fmt in FORMATS:
        assert got[fmt][0] == got["csv"][0], fmt
        assert got[fmt][1]["spec"]["ids_sha256"] == ids_sha256(ids)  # as the whole-DataFrame path hashed them
    if task != "retriever":
        rows = [json.loads(line) for line in got["parquet"][0].decode().splitlines()]
        assert [r["id"] for r in rows] == ids  # one row per input row, in order
        assert rows[5]["error"] == "MANIFEST row 5: an empty id"
        assert rows[-1]["error"] == f"MANIFEST row 13: duplicate id '{ids[0]}' (first at row 0)"
        assert sum("error" in r for r in rows) == 2
    else:
        products = pd.read_parquet(tmp_path / "parquet" / "products.parquet")
        assert products["id"].tolist() == [i for i in ids[:-1] if i]
        years = pd.read_csv(catalogue["csv"], dtype=str)["year"].tolist()
        assert products["year"].tolist() == [y for row, y in enumerate(years[:-1]) if row != 5]  # text, as in CSV


@pytest.mark.parametrize(("task", "fmt"), [("tagger", "jsonl"), ("retriever", "parquet")])
def test_killed_streamed_job_resumes_to_the_uninterrupted_output(
    task: str, fmt: str, trained: dict[str, Path], catalogue: dict[str, Path], tmp_path: Path
) -> None:
    name = "killed" if task == "retriever" else "killed.jsonl"
    killed, full = tmp_path / name, tmp_path / name.replace("killed", "full")
    args = job_args(task, trained[task], catalogue[fmt], catalogue["images"], killed)
    args[args.index("--batch_size") + 1], args[args.index("--block_size") + 1] = "1", "1"
    job = killed if task == "retriever" else tmp_path / ".killed.jsonl.job"
    done = kill_9_after_blocks(args, job, 2, "shard-*.safetensors" if task == "retriever" else "block-*.jsonl")
    assert 2 <= done < 14
    main(args)
    main([a if a != str(killed) else str(full) for a in args])
    assert output(task, killed, catalogue[fmt])[0] == output(task, full, catalogue[fmt])[0]


def test_a_list_in_a_text_cell_is_one_line_naming_row_and_column(
    trained: dict[str, Path], catalogue: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = catalogue["jsonl"].read_text().splitlines()
    bad = json.loads(lines[7])
    bad["title"] = ["two", "titles"]
    lines[7] = json.dumps(bad)
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    error = cli_error(
        job_args("tagger", trained["tagger"], manifest, catalogue["images"], tmp_path / "o.jsonl"), capsys
    )
    assert error == f"error: manifest {manifest} row 7, column 'title': a list cell (['two', 'titles']); " + (
        "this column needs one text or number per cell"
    )


def test_export_leaves_a_list_column_out_of_its_products_table_and_says_why(
    trained: dict[str, Path], catalogue: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = pq.ParquetDataset(catalogue["parquet"]).read()
    sizes = [["S", "M"] if row % 2 else None for row in range(table.num_rows)]
    pq.write_table(table.append_column("sizes", pa.array(sizes, pa.list_(pa.string()))), tmp_path / "m.parquet")
    out = tmp_path / "vectors"
    main(job_args("retriever", trained["retriever"], tmp_path / "m.parquet", catalogue["images"], out))
    products = pd.read_parquet(out / "products.parquet")
    assert list(products.columns) == ["id", "title", "articleType", "year", "image_path"]
    reason = f"not stored (give --columns to choose): {tmp_path / 'm.parquet'} row 1, column 'sizes': a list cell"
    assert reason in capsys.readouterr().err
