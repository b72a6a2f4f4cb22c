"""The Spark recipe of ``docs/spark.md``, run as the doc writes it (its code blocks are read out of the doc) in
``local[2]`` mode: for every task, the Parquet it writes holds the Python API's single-process rows, every id once in
input order, a broken photo gives its row an error, and each Python worker loads a model once."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, SAMPLE_IMAGES

if shutil.which("java") is None:
    pytest.skip("Spark needs a Java runtime and `java` is not on PATH", allow_module_level=True)
pytest.importorskip("pyspark", reason="pyspark is not installed (pip install pyspark)")

ROWS = 24
BROKEN = 5


def doc_blocks() -> list[str]:
    """The ```python blocks of docs/spark.md: the session, the recipe, its calls."""
    return re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "spark.md").read_text(), flags=re.S)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory, sample_df: pd.DataFrame, trained: dict[str, Path]
            ) -> Iterator[dict[str, Any]]:  # fmt: skip
    """The doc's code blocks run as written, in a folder that holds what they name: ``tagger.ckpt``,
    ``retriever.ckpt``, ``captioner.ckpt``, ``catalog.parquet`` (24 sample products, the 6th one's photo replaced
    by a file that is not an image) and ``photos/``. Yields the blocks' namespace (``spark``, ``tags``...)."""
    folder = tmp_path_factory.mktemp("spark-recipe")
    for task, checkpoint in trained.items():
        (folder / f"{task}.ckpt").symlink_to(checkpoint)
    (folder / "photos").symlink_to(SAMPLE_IMAGES)
    broken = folder / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    df = sample_df.iloc[::7].head(ROWS).reset_index(drop=True).copy()
    df.loc[BROKEN, "image"] = str(broken)  # absolute: image_root leaves it as it is
    df.to_parquet(folder / "catalog.parquet", index=False)
    namespace: dict[str, Any] = {"catalogue": df, "folder": folder}
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        for block in doc_blocks():  # session, recipe, the three jobs, reading back in order
            exec(block, namespace)  # noqa: S102 - the documented code is what is tested
        yield namespace
    finally:
        namespace["spark"].stop()
        os.chdir(cwd)


def read_back(written: dict[str, Any], folder: str) -> pd.DataFrame:
    """A job's Parquet, sorted by the carried row number as the doc says; every id once, in input order, and an
    error on the broken photo's row alone."""
    df = written["catalogue"]
    rows = pd.read_parquet(written["folder"] / folder).sort_values("row", ignore_index=True)
    assert rows["id"].tolist() == df["id"].tolist()
    assert rows["row"].is_unique
    errors = [None if pd.isna(e) else e for e in rows["error"]]  # pandas may read a null string back as NaN
    assert errors[BROKEN] and all(e is None for i, e in enumerate(errors) if i != BROKEN), errors
    return rows


def multimodal_api(checkpoint: Path) -> Any:
    import multimodal

    return multimodal.load(checkpoint, batch_size=8)


def absolute_photos(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(image=[p if Path(p).is_absolute() else str(SAMPLE_IMAGES / p) for p in df["image"]])


def api_rows(df: pd.DataFrame, checkpoint: Path, **options: Any) -> list[dict[str, Any]]:
    """The Python API's rows of the same products (photos given as absolute paths, as its users do)."""
    api = multimodal_api(checkpoint)
    rows = (api.with_options(**options) if options else api).run(absolute_photos(df))
    assert len(rows) == ROWS and [("error" in r) for r in rows] == [i == BROKEN for i in range(ROWS)]
    return rows


def worker_loads(spark: Any, checkpoint: Path) -> list[int]:
    """How many times each Python worker that answers loaded ``checkpoint``."""

    def probe(batches: Any) -> Any:
        import multimodal.spark as ms

        for _ in batches:
            yield pd.DataFrame({"loads": [sum(key[0] == str(checkpoint.resolve()) for key in ms.LOADS)]})

    return spark.range(0, 2, numPartitions=2).mapInPandas(probe, "loads int").toPandas()["loads"].tolist()


@pytest.mark.timeout(180)
def test_tags_equal_the_python_api(written: dict[str, Any], trained: dict[str, Path]) -> None:
    out = read_back(written, "tags")
    assert written["tags"]["id"].tolist() == out["id"].tolist()  # the doc's own reading, in order
    scores = [c for c in out.columns if c.endswith("_score")]
    assert scores
    for i, row in enumerate(api_rows(written["catalogue"], trained["tagger"])):
        for score in scores if i != BROKEN else ():
            attribute = score[: -len("_score")]
            assert out.loc[i, attribute] == row[attribute]
            assert abs(out.loc[i, score] - row[score]) < 1e-5
    assert out.loc[BROKEN, scores].isna().all()
    # 4 partitions over 2 workers: each worker that answers loaded the tagger once.
    loads = worker_loads(written["spark"], trained["tagger"])
    assert max(loads) == 1 and min(loads) <= 1, loads


@pytest.mark.timeout(180)
def test_vectors_equal_the_python_api(written: dict[str, Any], trained: dict[str, Path]) -> None:
    out = read_back(written, "vectors")
    for i, row in enumerate(api_rows(written["catalogue"], trained["retriever"])):
        if i == BROKEN:
            assert not isinstance(out.loc[i, "vector"], np.ndarray)
            continue
        vector = out.loc[i, "vector"]
        assert vector.dtype == np.float32 and vector.shape == tuple(row["embedding"].shape)
        np.testing.assert_allclose(vector, row["embedding"].numpy(), atol=1e-5)


@pytest.mark.timeout(180)
def test_captions_equal_the_python_api(written: dict[str, Any], trained: dict[str, Path]) -> None:
    out = read_back(written, "captions")
    for i, row in enumerate(api_rows(written["catalogue"], trained["captioner"], max_new_tokens=20)):
        if i != BROKEN:
            assert out.loc[i, "caption"] == row["caption"]
            assert abs(out.loc[i, "score"] - row["score"]) < 1e-5
    assert pd.isna(out.loc[BROKEN, "caption"])


def test_output_schema_names_the_checkpoints_columns(trained: dict[str, Path]) -> None:
    import multimodal.spark as ms

    schema = ms.output_schema(trained["tagger"], carry={"row": "bigint"})
    assert schema.startswith("`id` string, `row` bigint, `gender` string, `gender_score` double")
    assert schema.endswith("`error` string")
    assert ms.output_schema(trained["retriever"]) == "`id` string, `vector` array<float>, `error` string"
    top = ms.output_schema(trained["tagger"], top_k=3)
    assert "`gender_top` array<struct<label:string,score:double>>" in top


def test_top_k_pairs_and_a_missing_column(written: dict[str, Any], trained: dict[str, Path]) -> None:
    """``top_k > 1`` gives ``<attribute>_top`` as label/score structs equal to the API's pairs; a catalogue without
    a column the model reads stops the job with the error naming it."""
    import multimodal.spark as ms

    spark, df = written["spark"], written["catalogue"].head(4)
    fn = ms.predict_fn(trained["tagger"], batch_size=8, image_root=SAMPLE_IMAGES, top_k=2)
    out = spark.createDataFrame(df).mapInPandas(fn, fn.schema).toPandas()
    expected = multimodal_api(trained["tagger"]).with_top_k(2).run(absolute_photos(df))
    assert out["id"].tolist() == df["id"].tolist()
    for i, row in enumerate(expected):
        pairs = [(p["label"], p["score"]) for p in out.loc[i, "gender_top"]]
        assert [label for label, _ in pairs] == [label for label, _ in row["gender_top"]]
        np.testing.assert_allclose([s for _, s in pairs], [s for _, s in row["gender_top"]], atol=1e-5)
    fn = ms.predict_fn(trained["tagger"], image_root=SAMPLE_IMAGES)
    with pytest.raises(Exception, match="missing column"):
        spark.createDataFrame(df.drop(columns="title")).mapInPandas(fn, fn.schema).collect()
