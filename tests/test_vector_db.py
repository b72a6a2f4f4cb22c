"""Vectors for a vector database: `export --format parquet` (id, vector, metadata per row), read by `index` /
`search` as the other formats are, and docs/search.md's LanceDB recipe, run as written on such an export, giving
the same ids in the same order as `multimodal search --where` on a flat index of it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, SAMPLE_IMAGES, cli_error, run_cli

from multimodal import cli
from multimodal.errors import UserError
from multimodal.search.export import load_export

COLUMNS = ["title", "gender", "masterCategory", "articleType", "year"]
RECIPE_SECTION = "## 11. Loading vectors into a vector database"
QUERY, WHERE = "black leather shoes for men", "masterCategory = 'Footwear'"


def export(checkpoint: Path, manifest: Path, out: Path, fmt: str, *extra: str) -> Path:
    cli.main(["export", "--ckpt_path", str(checkpoint), "--input", str(manifest), "--image_root", str(SAMPLE_IMAGES),
              "--out", str(out), "--format", fmt, "--shard-size", "32", "--no_progress", *extra])  # fmt: skip
    return out


def search(index: Path, capsys: pytest.CaptureFixture[str], *query: str) -> list[dict]:
    capsys.readouterr()  # what earlier commands printed
    out = run_cli(["search", index, *query, "-k", 10], capsys)
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def exports(trained: dict[str, Path], sample_df: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Parquet and a safetensors export of the same 60 sample products (2 shards each), under one folder."""
    root = tmp_path_factory.mktemp("vector-db")
    sample_df.head(60).to_csv(root / "catalog.csv", index=False)
    for fmt in ("parquet", "safetensors"):
        export(trained["retriever"], root / "catalog.csv", root / fmt, fmt, "--columns", *COLUMNS)
    return root


def test_a_parquet_export_holds_whole_rows_and_searches_as_safetensors(
    exports: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parquet, safetensors = exports / "parquet", exports / "safetensors"
    shards = sorted(parquet.glob("shard-*.vectors.parquet"))
    count = json.loads((parquet / "export.json").read_text())["shards"]
    assert count >= 2 and [p.name for p in shards] == [f"shard-{b:06d}.vectors.parquet" for b in range(count)]
    table = pq.read_table(shards[0])
    assert table.column_names == ["id", "vector", *COLUMNS, "image_path"]
    kind = table.schema.field("vector").type
    assert pa.types.is_fixed_size_list(kind) and kind.list_size == 32 and kind.value_type == pa.float32()
    (_, vectors, products), (_, expected, expected_products) = load_export(parquet), load_export(safetensors)
    np.testing.assert_array_equal(vectors, expected)  # float16 values, stored as float32: the same numbers
    pd.testing.assert_frame_equal(products, expected_products)
    rows = pd.concat([pq.read_table(p).to_pandas() for p in shards], ignore_index=True)
    assert rows["id"].tolist() == products["id"].tolist()
    np.testing.assert_array_equal(np.stack(rows["vector"].to_numpy()), vectors)
    results = []
    for folder in (parquet, safetensors):
        cli.main(["index", str(folder), "--out", str(folder.with_name(folder.name + "-index"))])
        results.append(search(folder.with_name(folder.name + "-index"), capsys, "--text", QUERY, "--where", WHERE))
    assert results[0] == results[1] and len(results[0]) == 10


def test_the_documented_lancedb_recipe_answers_as_multimodal_search(
    exports: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytest.importorskip("lancedb", reason="lancedb is in the dev extra: pip install -e '.[dev]'")
    doc = (ROOT / "docs" / "search.md").read_text(encoding="utf-8")
    section = doc.split(f"\n{RECIPE_SECTION}\n", 1)[1].split("\n## ", 1)[0]
    recipe = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert QUERY in recipe and WHERE in recipe  # the query the recipe runs is the one compared below
    (tmp_path / "emb").symlink_to(exports / "parquet", target_is_directory=True)
    monkeypatch.chdir(tmp_path)  # the recipe's relative paths: emb/ and catalog.lancedb/
    scope: dict = {}
    exec(compile(recipe, "docs/search.md", "exec"), scope)  # noqa: S102 - the documented code, run as written
    index = exports / "parquet-flat"
    cli.main(["index", str(exports / "parquet"), "--out", str(index), "--index", "flat"])
    expected = search(index, capsys, "--text", QUERY, "--where", WHERE)
    hits = scope["hits"]
    assert hits["id"].tolist() == [r["id"] for r in expected]
    assert set(hits["masterCategory"]) == {"Footwear"} and len(hits) == 10
    np.testing.assert_allclose(1 - hits["_distance"], [r["score"] for r in expected], atol=1e-5)


def test_a_parquet_shard_deleted_is_computed_again_and_only_it(trained: dict[str, Path], exports: Path) -> None:
    folder = exports / "parquet"
    _, before, products = load_export(folder)
    kept = (folder / "shard-000000.vectors.parquet").stat().st_mtime_ns
    (folder / "shard-000001.vectors.parquet").unlink()  # as a kill before the shard's vector file was written
    with pytest.raises(UserError, match="missing shard"):
        load_export(folder)
    export(trained["retriever"], exports / "catalog.csv", folder, "parquet", "--columns", *COLUMNS)
    assert (folder / "shard-000000.vectors.parquet").stat().st_mtime_ns == kept  # a finished shard is not redone
    _, after, again = load_export(folder)
    np.testing.assert_array_equal(after, before)
    pd.testing.assert_frame_equal(again, products)


def test_a_metadata_column_named_vector_is_refused_for_parquet(
    trained: dict[str, Path], sample_df: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sample_df.head(4).assign(vector="x").to_csv(tmp_path / "catalog.csv", index=False)
    args = ["export", "--ckpt_path", trained["retriever"], "--input", tmp_path / "catalog.csv", "--image_root"]
    err = cli_error([*args, SAMPLE_IMAGES, "--out", tmp_path / "emb", "--format", "parquet"], capsys)
    assert "metadata column 'vector'" in err and "--columns" in err
    assert not (tmp_path / "emb").exists() or not list((tmp_path / "emb").glob("shard-*"))


def test_every_parquet_shard_has_one_schema_even_one_whose_products_were_all_skipped(tmp_path: Path) -> None:
    import torch

    from multimodal.search.vector_files import save_vectors

    full, empty = tmp_path / "shard-000000.vectors.parquet", tmp_path / "shard-000001.vectors.parquet"
    save_vectors(full, torch.rand(2, 4).half(), pd.DataFrame({"id": ["a", "b"], "title": ["x", None]}))
    save_vectors(empty, torch.zeros((0, 4)), pd.DataFrame([], columns=["id", "title"]))
    schemas = [pq.read_schema(p).remove_metadata() for p in (full, empty)]
    assert schemas[0] == schemas[1] and schemas[0].field("title").type == pa.string()
    assert len(pa.concat_tables([pq.read_table(p) for p in (full, empty)])) == 2
