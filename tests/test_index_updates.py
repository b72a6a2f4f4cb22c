"""Index integrity under builds and live updates: an id names one product (an export repeating one is refused), an
update must match the index's model and columns, and a filter on a column the index lacks says how to store it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLE_IMAGES, cli_error, run_cli

from multimodal import cli
from multimodal.search.export import load_export
from multimodal.search.index import load_index

COLUMNS = ["title", "gender", "year"]


def export_of(products: pd.DataFrame, checkpoint: Path, out: Path, columns: list[str] = COLUMNS) -> Path:
    """``multimodal export`` of these sample products, storing ``columns``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    products.to_csv(out.with_suffix(".csv"), index=False)
    cli.main(["export", "--ckpt_path", str(checkpoint), "--input", str(out.with_suffix(".csv")), "--image_root",
              str(SAMPLE_IMAGES), "--out", str(out), "--columns", *columns, "--no_progress"])  # fmt: skip
    return out


def snapshot(folder: Path) -> tuple[str, list[str]]:
    """What an index is on disk: the build its link points to and every build kept."""
    builds = folder.with_name(f".{folder.name}.builds")
    return os.readlink(folder), sorted(p.name for p in builds.iterdir())


@pytest.fixture(scope="module")
def catalogue(sample_df: pd.DataFrame) -> pd.DataFrame:
    return sample_df.head(60).reset_index(drop=True)


@pytest.fixture(scope="module")
def base(trained: dict[str, Path], catalogue: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An export of the first 40 products (title, gender, year)."""
    return export_of(catalogue.head(40), trained["retriever"], tmp_path_factory.mktemp("updates") / "base")


def test_an_export_repeating_an_id_is_refused_then_each_product_keeps_its_own_vector_and_title(
    base: Path, catalogue: pd.DataFrame, trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "index"
    run_cli(["index", base, "--out", folder], capsys)
    # ten new products and a new version of product 3; then a copy where row 1 (another product) carries row 0's id
    new = export_of(pd.concat([catalogue.iloc[40:50], catalogue.iloc[[3]]]), trained["retriever"], tmp_path / "new")
    repeated = tmp_path / "repeated"
    shutil.copytree(new, repeated)
    for name in ("shard-000000.parquet", "products.parquet"):
        table = pd.read_parquet(repeated / name)
        table.loc[1, "id"] = table.loc[0, "id"]
        table.to_parquet(repeated / name, index=False)
    twice = str(catalogue["id"].iat[40])
    before = snapshot(folder)
    err = cli_error(["index", folder, "--add", repeated], capsys)
    assert f"id '{twice}' on rows 0 and 1" in err and str(repeated) in err, err
    assert snapshot(folder) == before  # the index is untouched
    err = cli_error(["index", repeated, "--out", tmp_path / "other"], capsys)  # a build refuses it the same way
    assert f"id '{twice}' on rows 0 and 1" in err and not (tmp_path / "other").exists()

    summary = json.loads(run_cli(["index", folder, "--add", new], capsys).splitlines()[-1])
    assert {k: summary[k] for k in ("added", "replaced", "removed", "count")} == {
        "added": 10, "replaced": 1, "removed": 0, "count": 50}  # fmt: skip
    index = load_index(folder)
    assert index.count == index.products["id"].nunique() == 50
    _, vectors, products = load_export(new)
    for vector, pid, title in zip(vectors, products["id"].astype(str), products["title"], strict=True):
        _, rows = index.search(vector[None], 1)
        row = int(rows[0, 0])
        assert str(index.products["id"].iat[row]) == pid and index.products["title"].iat[row] == title
        np.testing.assert_allclose(index.reconstruct(np.array([row]))[0], vector, atol=1e-6)
    assert "both in --remove and in --add" in cli_error(
        ["index", folder, "--add", new, "--remove", _ids_file(tmp_path, [twice])], capsys
    )


def _ids_file(folder: Path, ids: list[str]) -> Path:
    path = folder / "ids.txt"
    path.write_text("\n".join(ids) + "\n")
    return path


def test_an_update_with_other_columns_is_refused_and_a_filter_keeps_every_matching_product(
    base: Path, catalogue: pd.DataFrame, trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "index"
    run_cli(["index", base, "--out", folder], capsys)
    two = catalogue.iloc[[40, 44]]  # two men's products of 2012 and 2011
    before = snapshot(folder)
    extra = export_of(two, trained["retriever"], tmp_path / "extra", [*COLUMNS, "articleType"])
    err = cli_error(["index", folder, "--add", extra], capsys)
    assert "only the export has articleType" in err and "--columns title gender year" in err, err
    fewer = export_of(two, trained["retriever"], tmp_path / "fewer", ["title"])
    err = cli_error(["index", folder, "--add", fewer], capsys)
    assert "only the index has gender, year" in err and "--columns title gender year" in err, err
    assert snapshot(folder) == before

    run_cli(["index", folder, "--add", export_of(two, trained["retriever"], tmp_path / "same")], capsys)
    held = pd.concat([catalogue.head(40), two])
    wanted = set(held[(held["gender"] == "Men") & (held["year"].astype(int) >= 2011)]["id"])
    probe = str(catalogue["id"].iat[0])
    out = run_cli(["search", folder, "--like", probe, "-k", "41", "--where", "gender = 'Men' AND year >= 2011"], capsys)
    found = {json.loads(line)["id"] for line in out.splitlines()}
    assert found == wanted - {probe} and len(found) > 20  # old and new products alike, not only the new ones

    titles_only = tmp_path / "titles-only"
    run_cli(["index", fewer, "--out", titles_only], capsys)
    probe = str(two["id"].iat[0])
    err = cli_error(["search", titles_only, "--like", probe, "-k", "1", "--where", "gender = 'Men'"], capsys)
    assert "unknown column 'gender' (the index stores: id, title, image_path)" in err, err
    assert "export with --columns title gender and rebuild the index" in err
