"""Several photos per product, in every task: products of 1, 2 and 4 photos (real photos of the sample), padding
with masked photo slots, photo order, photos that fail, ``max_images``, and training on lists of photos."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLE_IMAGES, TINY_CONFIGS, fit_tiny, run_cli

import multimodal
from multimodal.data.photos import photo_list
from multimodal.errors import UserError

PHOTOS = [str(p) for p in sorted(SAMPLE_IMAGES.glob("*.jpg"))[:8]]
TITLE = "Blue cotton shirt for men"


def outputs(api: Any, products: list[dict[str, Any]]) -> list[Any]:
    """Each product's outputs as arrays: tag probabilities, a search vector, or the caption's words."""
    if isinstance(api, multimodal.tagging.predictor.Tagger):
        probs = api.predict_proba(products)
        return [np.concatenate([df.iloc[i].to_numpy(float) for df in probs.values()]) for i in range(len(products))]
    if isinstance(api, multimodal.search.predictor.Retriever):
        return list(api.extract_embedding(products))
    return api.caption(products)["caption"].tolist()


def same(a: list[Any], b: list[Any]) -> bool:
    if isinstance(a[0], str):
        return a == b
    return all(np.allclose(x, y, atol=1e-5) for x, y in zip(a, b, strict=True))


def product(pid: str, photos: list[str]) -> dict[str, Any]:
    return {"id": pid, "image": photos, "title": TITLE}


@pytest.fixture(scope="module")
def apis(trained: dict[str, Path]) -> dict[str, Any]:
    return {task: multimodal.load(path) for task, path in trained.items()}


def test_a_cell_is_one_photo_a_list_or_pipe_joined() -> None:
    assert photo_list("a.jpg", "c") == ["a.jpg"]
    assert photo_list("a.jpg| b.jpg |", "c") == ["a.jpg", "b.jpg"]
    assert photo_list(["a.jpg", None, "", "b.jpg"], "c") == ["a.jpg", "b.jpg"]
    assert photo_list(np.array(["a.jpg"]), "c") == ["a.jpg"] and photo_list([], "c") == photo_list("NA", "c") == []
    with pytest.raises(UserError, match="rows.csv row 3, column 'image': a dict cell"):
        photo_list({"url": "a.jpg"}, "rows.csv row 3, column 'image'")


@pytest.mark.parametrize("task", list(TINY_CONFIGS))
def test_products_of_1_2_and_4_photos(apis: dict[str, Any], task: str) -> None:
    """Every task reads 1, 2 or 4 photos; a product padded with masked photo slots (beside one of 4 photos in the
    same batch) gives what it gives alone; more photos change the output (they are read)."""
    api = apis[task]
    one, two, four = product("one", PHOTOS[:1]), product("two", PHOTOS[1:3]), product("four", PHOTOS[3:7])
    together = outputs(api, [one, two, four])
    alone = [outputs(api, [p])[0] for p in (one, two, four)]
    assert same(together, alone)
    assert same(outputs(api, [{**one, "image": PHOTOS[0]}]), alone[:1])  # a list of one = the plain cell
    if task != "captioner":  # a caption of tiny random models may not change with the photos
        assert not same(outputs(api, [product("x", PHOTOS[1:2])]), outputs(api, [two]))


@pytest.mark.parametrize("task", list(TINY_CONFIGS))
def test_photo_order_does_not_matter(apis: dict[str, Any], task: str) -> None:
    """Tags, search vectors and captions (cross-attention conditioning) read a product's photos as a set."""
    api = apis[task]
    assert same(outputs(api, [product("ab", PHOTOS[:2])]), outputs(api, [product("ba", PHOTOS[1::-1])]))


def test_photos_that_fail_are_skipped_and_named(apis: dict[str, Any], tmp_path: Path) -> None:
    api = apis["tagger"]
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    broken, gone = str(tmp_path / "broken.jpg"), str(tmp_path / "gone.jpg")
    rows = api.run([product("partly", [PHOTOS[0], gone, broken]), product("none", [gone, broken])])
    assert [s["photo"] for s in rows[0]["skipped_photos"]] == [gone, broken]
    assert "image not found" in rows[0]["skipped_photos"][0]["reason"] and "error" not in rows[0]
    assert rows[1]["error"].startswith("none of its 2 photos: image not found")
    assert same(outputs(api, [product("partly", [PHOTOS[0], gone])]), outputs(api, [product("p", PHOTOS[:1])]))


def test_photos_past_max_images_are_named_not_read(apis: dict[str, Any]) -> None:
    api = apis["retriever"]
    assert api.columns.max_images == 4
    (row,) = api.run([product("six", PHOTOS[:6])])
    assert [s["photo"] for s in row["skipped_photos"]] == PHOTOS[4:6]
    assert all(s["reason"] == "over max_images (4)" for s in row["skipped_photos"])
    assert same(outputs(api, [product("six", PHOTOS[:6])]), outputs(api, [product("four", PHOTOS[:4])]))


def test_a_dict_cell_is_a_one_line_error(apis: dict[str, Any]) -> None:
    with pytest.raises(UserError, match=r"row 1, column 'image': a dict cell"):
        apis["tagger"].run([product("a", PHOTOS[:1]), {"id": "b", "image": {"front": PHOTOS[0]}, "title": TITLE}])


def test_fit_and_predict_on_lists_of_photos(tmp_path: Path, sample_df: pd.DataFrame, capsys: Any) -> None:
    """``fit`` on a JSONL manifest whose photo cells are lists (up to 3, ``max_images: 2``), then ``predict``."""
    df = sample_df.iloc[::40].head(24).reset_index(drop=True)
    names = df["image"].tolist()
    rows = [{**r, "image": [names[i], names[(i + 1) % len(df)], names[(i + 2) % len(df)]][: 1 + i % 3]}
            for i, r in enumerate(df.to_dict("records"))]  # fmt: skip
    manifest = tmp_path / "catalogue.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = tmp_path / "report.json"
    extra = ["--data.init_args.max_images", "2", "--data.init_args.report_path", str(report)]
    ckpt = fit_tiny("tagger", tmp_path / "fit", manifest, SAMPLE_IMAGES, 2, *extra)
    assert json.loads(report.read_text())["photos_over_max_images"] == sum(1 for i in range(len(df)) if i % 3 == 2)
    out = tmp_path / "tags.jsonl"
    run_cli(["predict", "--ckpt_path", ckpt, "--input", manifest, "--image_root", SAMPLE_IMAGES, "--out", out], capsys)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in lines] == df["id"].tolist() and not any("error" in r for r in lines)
    assert [len(r.get("skipped_photos", [])) for r in lines] == [int(i % 3 == 2) for i in range(len(df))]
