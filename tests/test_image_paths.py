"""One image-path rule on every surface: a relative path is under the image root, an absolute path is read as it is;
``confine_images`` refuses, row by row, a path outside the root. A job in which every row fails exits with 2."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import SAMPLE_IMAGES, cli_error, run_cli

import multimodal
from multimodal.data.datamodule import ProductDataModule
from multimodal.errors import UserError
from multimodal.search.export import load_export


@pytest.fixture
def absolute(tmp_path: Path, sample_df: pd.DataFrame) -> Path:
    """Ten sample products whose image column holds absolute paths (into examples/, outside tmp_path)."""
    df = sample_df.iloc[7::53].head(10).reset_index(drop=True)
    df["image"] = [str(SAMPLE_IMAGES / name) for name in df["image"]]
    path = tmp_path / "absolute.csv"
    df.to_csv(path, index=False)
    return path


def predict(ckpt: Path, manifest: Path, out: Path, capsys: pytest.CaptureFixture[str], *extra: object) -> dict:
    summary = run_cli(["predict", "--ckpt_path", ckpt, "--data.manifest", manifest, "--out", out, "--no_progress",
                       *extra], capsys)  # fmt: skip
    return json.loads(summary.strip().splitlines()[-1])


def test_absolute_paths_give_the_same_tags_in_predict_and_the_python_api(
    trained: dict[str, Path], absolute: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summary = predict(trained["tagger"], absolute, tmp_path / "tags.jsonl", capsys)
    assert summary["complete"] and summary["rows"] == 10 and summary["errors"] == 0
    cli = [json.loads(line) for line in (tmp_path / "tags.jsonl").read_text().splitlines()]
    api = multimodal.load(trained["tagger"]).predict(pd.read_csv(absolute, dtype=str, keep_default_na=False))
    assert "error" not in api.columns
    assert api.to_dict("records") == cli
    # an export and a caption job read the same paths
    run_cli(["export", "--ckpt_path", trained["retriever"], "--input", absolute, "--out", tmp_path / "emb",
             "--no_progress"], capsys)  # fmt: skip
    assert load_export(tmp_path / "emb")[0]["count"] == 10
    captions = tmp_path / "captions.jsonl"
    run_cli(["caption", "--ckpt_path", trained["captioner"], "--input", absolute, "--out", captions,
             "--max_new_tokens", "3", "--no_progress"], capsys)  # fmt: skip
    rows = [json.loads(line) for line in captions.read_text().splitlines()]
    assert len(rows) == 10 and all("caption" in r and "error" not in r for r in rows)


def test_confinement_refuses_paths_outside_the_root_row_by_row(
    trained: dict[str, Path], absolute: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    df = pd.read_csv(absolute, dtype=str, keep_default_na=False)
    df.loc[:4, "image"] = [Path(p).name for p in df["image"][:5]]  # rows 0-4 relative, under the root
    mixed = tmp_path / "mixed.csv"
    df.to_csv(mixed, index=False)
    summary = predict(trained["tagger"], mixed, tmp_path / "c.jsonl", capsys, "--image_root", SAMPLE_IMAGES,
                      "--confine_images")  # fmt: skip
    rows = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert summary["errors"] == 0 and [r["id"] for r in rows] == df["id"].tolist()  # absolute, inside the root
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    error = cli_error(["predict", "--ckpt_path", trained["tagger"], "--data.manifest", mixed, "--image_root", outside,
                       "--confine_images", "--out", tmp_path / "all.jsonl", "--no_progress"], capsys)  # fmt: skip
    assert f"every row of {mixed} failed (10; first: row 0 (id {df['id'][0]}): " in error
    rows = [json.loads(line) for line in (tmp_path / "all.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == df["id"].tolist()  # written, one line a row, each with its reason
    assert all(r["error"].endswith("(confine_images is on)") for r in rows[5:])
    assert rows[5]["error"] == f"image path '{df['image'][5]}' escapes the image root {outside} (confine_images is on)"
    assert all(r["error"].startswith("image not found") for r in rows[:5])


def test_data_module_reads_absolute_paths_and_confines_on_request(absolute: Path, preprocessing: object) -> None:
    dm = ProductDataModule(str(absolute), text_columns=["title"], attributes=["gender"], num_workers=0)
    dm.attach(preprocessing)
    dataset = dm.dataset("all")
    assert len(dataset) == 10 and all("error" not in dataset[i] for i in range(10))
    with pytest.raises(UserError, match=r"row 0 \(id \w+\): image path '/.*' escapes the image root"):
        ProductDataModule(str(absolute), text_columns=["title"], attributes=["gender"], confine_images=True)
    dm = ProductDataModule(str(absolute), text_columns=["title"], attributes=["gender"], confine_images=True,
                           image_root=str(SAMPLE_IMAGES), num_workers=0)  # fmt: skip
    assert len(dm.report()["skipped"]) == 0 and sum(dm.report()["rows"].values()) == 10
