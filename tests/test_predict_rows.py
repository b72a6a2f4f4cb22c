"""One output line per input row, in input order, for every batch job: a repeated or an empty id gets a line of its
own with an ``error`` (the repeated one names the first row), so outputs join to inputs by position; a stopped
job resumed writes every row exactly once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import SAMPLE_IMAGES

from multimodal.cli import main
from multimodal.search.export import load_export


@pytest.fixture
def repeated(tmp_path: Path, sample_df: pd.DataFrame) -> tuple[Path, Path, list[str]]:
    """Eight rows: six sample products, the second one's id again at row 3 (another photo and title) and an empty
    id at row 6. Returns (manifest, image folder, the ids in input order)."""
    images = tmp_path / "images"
    images.mkdir()
    df = sample_df.iloc[3::41].head(7)[["id", "image", "title"]].reset_index(drop=True)
    for name in df["image"]:
        shutil.copy(SAMPLE_IMAGES / name, images / name)
    df.loc[3, "id"] = df.loc[1, "id"]
    df = pd.concat([df.iloc[:6], pd.DataFrame([{"id": "", "image": df.loc[6, "image"], "title": "x"}])])
    df = pd.concat([df, pd.DataFrame([df.iloc[0].to_dict()]).assign(id="last")], ignore_index=True)
    manifest = tmp_path / "repeated.csv"
    df.to_csv(manifest, index=False)
    return manifest, images, df["id"].tolist()


def job(command: str, ckpt: Path, manifest: Path, images: Path, out: Path, *extra: str) -> list[str]:
    return [command, "--ckpt_path", str(ckpt), "--input", str(manifest), "--image_root", str(images), "--out",
            str(out), "--batch_size", "2", "--block_size", "2", "--no_progress", *extra]  # fmt: skip


def check_rows(rows: list[dict], ids: list[str], manifest: Path) -> None:
    """Line i is input row i; the repeated id (row 3) and the empty one (row 6) carry their reasons."""
    assert [r["id"] for r in rows] == ids
    errors = {i: r["error"] for i, r in enumerate(rows) if "error" in r}
    assert sorted(errors) == [3, 6], errors
    assert errors[3] == f"{manifest} row 3: duplicate id '{ids[1]}' (first at row 1)"
    assert errors[6] == f"{manifest} row 6: an empty id"


@pytest.mark.parametrize("command", ["predict", "caption"])
def test_every_input_row_has_its_own_line(
    command: str, trained: dict[str, Path], repeated: tuple[Path, Path, list[str]], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    manifest, images, ids = repeated
    ckpt = trained["tagger" if command == "predict" else "captioner"]
    out = tmp_path / "out.jsonl"
    main(job(command, ckpt, manifest, images, out, *(["--max_new_tokens", "3"] if command == "caption" else [])))
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["complete"] and summary["rows"] == len(ids) == 8 and summary["errors"] == 2
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    check_rows(rows, ids, manifest)
    key = "gender" if command == "predict" else "caption"
    assert all(key in r for i, r in enumerate(rows) if i not in (3, 6))


def test_csv_output_joins_to_the_input_by_position(
    trained: dict[str, Path], repeated: tuple[Path, Path, list[str]], tmp_path: Path
) -> None:
    manifest, images, ids = repeated
    out = tmp_path / "tags.csv"
    main(job("predict", trained["tagger"], manifest, images, out))
    got = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert got["id"].tolist() == ids and (got["error"] != "").tolist() == [i in (3, 6) for i in range(8)]


def test_stopped_job_resumes_to_one_line_per_row(
    trained: dict[str, Path], repeated: tuple[Path, Path, list[str]], tmp_path: Path
) -> None:
    """Stopped after two blocks (the first error row is in the second), then resumed: equal to one whole run."""
    manifest, images, ids = repeated
    full, resumed = tmp_path / "full.jsonl", tmp_path / "resumed.jsonl"
    main(job("predict", trained["tagger"], manifest, images, full))
    main(job("predict", trained["tagger"], manifest, images, resumed, "--limit_batches", "2"))
    assert not resumed.exists() and len(list((tmp_path / ".resumed.jsonl.job").glob("block-*.jsonl"))) == 2
    main(job("predict", trained["tagger"], manifest, images, resumed))
    assert resumed.read_text() == full.read_text()
    check_rows([json.loads(line) for line in resumed.read_text().splitlines()], ids, manifest)


def test_export_lists_the_refused_rows_in_input_order(
    trained: dict[str, Path], repeated: tuple[Path, Path, list[str]], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """An export has one vector per product id: the repeated and the empty id are listed under ``skipped``."""
    manifest, images, ids = repeated
    main(job("export", trained["retriever"], manifest, images, tmp_path / "emb"))
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["count"] == 6 and summary["skipped"] == 2
    export, _, products = load_export(tmp_path / "emb")
    assert products["id"].tolist() == [i for n, i in enumerate(ids) if n not in (3, 6)]
    assert [s["id"] for s in export["skipped"]] == [ids[1], ""]
    assert "(first at row 1)" in export["skipped"][0]["reason"]
