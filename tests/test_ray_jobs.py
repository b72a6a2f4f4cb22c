"""Batch inference on Ray Data (:mod:`multimodal.distributed`) with a local Ray (2 CPUs, no dashboard): for every
task, the rows equal the Python API's single-process rows, every id comes back once, and a broken photo gives its
row an error instead of failing the job."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLE_IMAGES

ray = pytest.importorskip("ray")
ROWS = 24


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory, sample_df: pd.DataFrame) -> pd.DataFrame:
    """24 sample products (photo names relative to the sample's image folder) with a row number, the 6th one's
    photo replaced by a file that is not an image."""
    broken = tmp_path_factory.mktemp("broken") / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    df = sample_df.iloc[::7].head(ROWS).reset_index(drop=True).copy()
    df.loc[5, "image"] = str(broken)  # absolute: image_root leaves it as it is
    df.insert(0, "row", range(len(df)))
    return df


def ray_rows(df: pd.DataFrame, checkpoint: Path, num_actors: int = 2, **options: Any) -> pd.DataFrame:
    import multimodal.distributed as md

    # Three blocks given as they are: a repartition would need a CPU task while the actors hold both CPUs.
    ds = ray.data.from_pandas([df.iloc[:10], df.iloc[10:17], df.iloc[17:]])
    result = md.predict(ds, checkpoint, batch_size=8, num_actors=num_actors, image_root=SAMPLE_IMAGES, carry=["row"],
                        **options).materialize()  # fmt: skip
    out = result.to_pandas().sort_values("row").reset_index(drop=True)
    out.attrs["schema"] = result.schema()
    return out


def api_rows(df: pd.DataFrame, checkpoint: Path, run: str = "run", **options: Any) -> list[dict[str, Any]]:
    """The Python API's rows of the same products (photos given as absolute paths, as its users do)."""
    import multimodal

    api = multimodal.load(checkpoint, batch_size=8)
    local = df.assign(image=[p if Path(p).is_absolute() else str(SAMPLE_IMAGES / p) for p in df["image"]])
    bound = getattr(api, run)(**options) if options else api
    return bound.run(local)


def check_rows(out: pd.DataFrame, df: pd.DataFrame) -> None:
    assert out["row"].tolist() == list(range(len(df)))
    assert out["id"].tolist() == df["id"].tolist()  # every id once, in input order
    errors = [None if pd.isna(e) else e for e in out["error"]]  # Arrow-backed columns read back None as NA
    assert errors[5] is not None and all(e is None for i, e in enumerate(errors) if i != 5), errors


@pytest.mark.timeout(120)
def test_tagger_rows_equal_the_python_api(local_ray: None, trained: dict[str, Path], catalogue: pd.DataFrame) -> None:
    out = ray_rows(catalogue, trained["tagger"])
    check_rows(out, catalogue)
    expected = api_rows(catalogue, trained["tagger"])
    scores = [c for c in out.columns if c.endswith("_score")]
    assert scores and len(expected) == ROWS
    for i, row in enumerate(expected):
        assert ("error" in row) == (i == 5)
        for score in scores if i != 5 else ():
            attribute = score[: -len("_score")]
            assert out.loc[i, attribute] == row[attribute]
            assert abs(out.loc[i, score] - row[score]) < 1e-5


@pytest.mark.timeout(120)
def test_retriever_vectors_equal_the_python_api(
    local_ray: None, trained: dict[str, Path], catalogue: pd.DataFrame
) -> None:
    out = ray_rows(catalogue, trained["retriever"], num_actors=1)
    check_rows(out, catalogue)
    assert str(out.attrs["schema"].base_schema.field("vector").type) == "list<item: float>"  # float32 in the files
    expected = api_rows(catalogue, trained["retriever"])
    for i, row in enumerate(expected):
        if i == 5:
            assert "error" in row and not isinstance(out.loc[i, "vector"], list | np.ndarray)
            continue
        vector = np.asarray(out.loc[i, "vector"])
        assert vector.shape == tuple(row["embedding"].shape)
        np.testing.assert_allclose(vector, row["embedding"].numpy(), atol=1e-5)


@pytest.mark.timeout(120)
def test_captioner_captions_equal_the_python_api(
    local_ray: None, trained: dict[str, Path], catalogue: pd.DataFrame
) -> None:
    out = ray_rows(catalogue, trained["captioner"], num_actors=1, max_new_tokens=6)
    check_rows(out, catalogue)
    expected = api_rows(catalogue, trained["captioner"], run="with_options", max_new_tokens=6)
    for i, row in enumerate(expected):
        assert out.loc[i, "caption"] == row["caption"] if i != 5 else "error" in row
        if i != 5:
            assert abs(out.loc[i, "score"] - row["score"]) < 1e-5


def test_repeated_and_empty_ids_get_their_own_errors(
    local_ray: None, trained: dict[str, Path], catalogue: pd.DataFrame
) -> None:
    """A batch the Python API refuses as a whole (a repeated or empty id) still gives every row its output line."""
    df = catalogue.head(4).copy()
    df.loc[2, "id"] = df.loc[0, "id"]
    df.loc[3, "id"] = ""
    out = ray_rows(df, trained["tagger"], num_actors=1)
    assert out["row"].tolist() == [0, 1, 2, 3]
    errors = [None if pd.isna(e) else e for e in out["error"]]
    assert errors[0] is None and errors[1] is None
    assert "duplicate id" in errors[2] and "batch row 0" in errors[2]
    assert "empty id" in errors[3]


def test_bad_options_are_one_line_errors(local_ray: None, trained: dict[str, Path], tmp_path: Path) -> None:
    import multimodal.distributed as md
    from multimodal.errors import UserError

    ds = ray.data.from_items([{"id": "1", "image": "1580.jpg", "title": "x"}])
    with pytest.raises(UserError, match="does not exist"):
        md.predict(ds, tmp_path / "missing.ckpt")
    with pytest.raises(UserError, match="num_actors"):
        md.predict(ds, trained["tagger"], num_actors=0)
    with pytest.raises(UserError, match="carry cannot name"):
        md.predict(ds, trained["tagger"], carry=["id"])
