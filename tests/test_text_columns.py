"""Several text columns: a tagger trained on ``text_columns: [title, description]`` reads both, in its text tower and
in its wide n-gram head, with a separator where the title ends; the Python API, ``multimodal predict``, the ONNX
export on both runtimes and the tagging benchmark's methods all read the same columns.

The catalogue is the committed sample with a ``description`` made from other columns of the same row ("colour:
<baseColour>. usage: <usage>"), so it carries what the title often lacks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLE_IMAGES, fit_tiny

import multimodal

COLUMNS = ["title", "description"]
NO_DESCRIPTION = 1  # a row whose description cell is empty: the title alone, as today
BUCKETS = 1 << 16  # few enough collisions that a description token's hash row is its own


def describe(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with a ``description`` column from the row's colour and usage (empty in row ``NO_DESCRIPTION``)."""
    df = df.copy()
    df["description"] = [f"colour: {c}. usage: {u}" for c, u in zip(df["baseColour"], df["usage"], strict=True)]
    df.loc[NO_DESCRIPTION, "description"] = ""
    return df


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory, sample_df: pd.DataFrame) -> Path:
    """A catalogue folder (``metadata.csv`` + ``images/``) of 64 sample products with a description column."""
    folder = tmp_path_factory.mktemp("two-columns")
    (folder / "images").mkdir()
    df = describe(sample_df.iloc[::13].head(64).reset_index(drop=True))
    for name in df["image"]:
        shutil.copy(SAMPLE_IMAGES / name, folder / "images" / name)
    df.to_csv(folder / "metadata.csv", index=False)
    return folder


@pytest.fixture(scope="module")
def checkpoint(catalogue: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny tagger trained on both columns (its config's one epoch; an n-gram head of ``BUCKETS`` rows)."""
    root = tmp_path_factory.mktemp("two-columns-fit")
    extra = ["--data.init_args.text_columns", json.dumps(COLUMNS), "--model.init_args.ngram_buckets", str(BUCKETS)]
    return fit_tiny("tagger", root, catalogue / "metadata.csv", catalogue / "images", 6, *extra)


@pytest.fixture(scope="module")
def products(catalogue: Path) -> pd.DataFrame:
    """The catalogue's first 16 products as Python API input: photo paths absolute, no label columns."""
    df = pd.read_csv(catalogue / "metadata.csv", dtype=str, keep_default_na=False).head(16)
    df["image"] = [str(catalogue / "images" / name) for name in df["image"]]
    return df[["id", "image", *COLUMNS]]


def blanked(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(description="")


def probabilities(tagger: object, df: pd.DataFrame) -> np.ndarray:
    """Every head's probabilities side by side ``(N, sum of classes)``."""
    return np.concatenate([p.to_numpy() for p in tagger.predict_proba(df).values()], axis=1)


def tokens(tagger: object, texts: dict[str, list[str | None]]) -> list[list[str]]:
    fn = tagger.model.text_fn()
    batch = fn(texts)
    return [
        [t for t, m in zip(fn.tokenizer.convert_ids_to_tokens(ids), mask, strict=True) if m]
        for ids, mask in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist(), strict=True)
    ]


def test_the_text_function_joins_every_column_with_a_separator(checkpoint: Path) -> None:
    tagger = multimodal.load(checkpoint)
    assert tagger.columns.texts == tuple(COLUMNS)  # the checkpoint records the columns it reads, in order
    texts = {"title": ["Navy Shirt", "Navy Shirt", None], "description": ["colour: Navy Blue", None, "usage: Casual"]}
    assert tokens(tagger, texts) == [
        ["[CLS]", "navy", "shirt", ".", "colour", ":", "navy", "blue", "[SEP]"],  # the title ends at the "."
        ["[CLS]", "navy", "shirt", "[SEP]"],  # a missing column is left out, with its separator
        ["[CLS]", "usage", ":", "casual", "[SEP]"],
    ]


def test_the_ngram_head_learns_from_the_description(checkpoint: Path) -> None:
    tagger = multimodal.load(checkpoint)
    head, fn = tagger.model.ngram_head, tagger.model.text_fn()
    assert head is not None and head.buckets == BUCKETS

    def rows(texts: dict[str, list[str | None]]) -> list[set[int]]:
        batch = fn(texts)
        return [set(r.tolist()) - {0} for r in head.ngram_ids(batch["input_ids"], batch["attention_mask"])]

    both, title = rows({"title": ["Navy Shirt", "Navy Shirt"], "description": ["colour: Navy Blue", None]})
    assert title < both  # the title's n-grams, and more: the description's
    words = {w: rows({"title": [w], "description": [None]})[0] for w in ("colour", "usage")}
    assert words["colour"] <= both and not words["colour"] & title
    # Training fed the description to the head: the rows of its words (in no title) have moved from zero.
    weight = head.table.weight.detach()
    for word, (row,) in words.items():
        assert weight[row].abs().sum() > 0, word


def test_predictions_read_the_description_and_no_other_column(checkpoint: Path, products: pd.DataFrame) -> None:
    tagger = multimodal.load(checkpoint)
    full = probabilities(tagger, products)
    without = probabilities(tagger, blanked(products))
    changed = np.abs(full - without).max(axis=1)  # (N,)
    assert changed[NO_DESCRIPTION] < 1e-6  # its description was empty already (the batch's padding differs)
    assert (np.delete(changed, NO_DESCRIPTION) > 1e-3).all(), changed
    # A column the model was not trained on changes nothing.
    other = probabilities(tagger, products.assign(notes="colour: Pink. usage: Party"))
    np.testing.assert_array_equal(other, full)


def test_multimodal_predict_reads_both_columns(
    checkpoint: Path, catalogue: Path, products: pd.DataFrame, tmp_path: Path
) -> None:
    from multimodal.cli import main

    def predict(df: pd.DataFrame, name: str) -> list[dict]:
        manifest, out = tmp_path / f"{name}.csv", tmp_path / f"{name}.jsonl"
        df.assign(image=[Path(p).name for p in df["image"]]).to_csv(manifest, index=False)
        main(["predict", "--ckpt_path", str(checkpoint), "--data.manifest", str(manifest), "--data.image_root",
              str(catalogue / "images"), "--out", str(out), "--no_progress"])  # fmt: skip
        return [json.loads(line) for line in out.read_text().splitlines()]

    rows, api = predict(products, "full"), multimodal.load(checkpoint).run(products)
    assert [r["id"] for r in rows] == [r["id"] for r in api]
    for row, expected in zip(rows, api, strict=True):
        assert {k: v for k, v in row.items() if not k.endswith("_score")} == {
            k: v for k, v in expected.items() if not k.endswith("_score")
        }
        assert all(abs(row[k] - expected[k]) < 1e-5 for k in expected if k.endswith("_score"))
    blank = predict(blanked(products), "blank")
    changed = np.abs(scores(blank) - scores(rows)).max(axis=1)  # (N,) of the top labels' scores
    assert changed[NO_DESCRIPTION] < 1e-5
    assert (np.delete(changed, NO_DESCRIPTION) > 1e-3).sum() >= len(rows) // 2, changed


def scores(rows: list[dict]) -> np.ndarray:
    """The top labels' scores ``(N, attributes)`` of output rows."""
    return np.array([[v for k, v in r.items() if k.endswith("_score")] for r in rows])


def test_the_exported_text_template_gives_the_eager_tokens(
    checkpoint: Path, products: pd.DataFrame, tmp_path: Path
) -> None:
    """What an export records of the text (``model.json``'s ``preprocess.text``, written by the export's own
    function) and what the torch-free runtime makes of it: the eager tagger's token ids for both columns."""
    from multimodal.onnx.preprocess import text_inputs
    from multimodal.onnx.preprocess_export import text_section

    model = multimodal.load(checkpoint).model
    settings = text_section(model, model.text.tokenizer, model.text.max_length, COLUMNS, tmp_path)
    assert settings["inputs"] == [{"prefix": "", "columns": COLUMNS}]
    assert settings["separator"] == model.text_fn().separator
    texts = {c: [v or None for v in products[c]] for c in COLUMNS}
    texts["title"][2] = None  # a description alone
    eager = model.text_fn()(texts)
    lite = text_inputs(texts, tmp_path / settings["tokenizer"], settings)
    for key in ("input_ids", "attention_mask"):
        np.testing.assert_array_equal(lite[key], eager[key].numpy())


@pytest.mark.slow
def test_the_onnx_export_joins_the_same_columns_on_both_runtimes(
    checkpoint: Path, products: pd.DataFrame, tmp_path: Path
) -> None:
    """The whole export (half a minute): its graphs on the torch-free runtime and on the full install's ONNX
    Runtime path give the eager probabilities, with and without the description."""
    from multimodal.lite.loading import load_api
    from multimodal.onnx.export import export_model

    eager = multimodal.load(checkpoint)
    info = export_model(checkpoint, tmp_path / "onnx", progress=False)
    text = info["preprocess"]["text"]
    assert text["inputs"] == [{"prefix": "", "columns": COLUMNS}]
    assert text["separator"] == eager.model.text_fn().separator
    reference = probabilities(eager, products)
    for api in (load_api(tmp_path / "onnx", batch_size=8), multimodal.load(tmp_path / "onnx", runtime="onnx")):
        np.testing.assert_allclose(probabilities(api, products), reference, atol=1e-4)
        np.testing.assert_allclose(probabilities(api, blanked(products)), probabilities(eager, blanked(products)),
                                   atol=1e-4)  # fmt: skip


def test_the_tagging_benchmark_gives_every_method_the_same_columns(
    catalogue: Path, tmp_path: Path, torch_state: None
) -> None:
    from benchmarks import tagging_quality
    from benchmarks.quality.tag_peer import _text
    from multimodal.data.records import ProductRecord

    def peer_text(title: str | None, description: str | None) -> str:
        return _text(ProductRecord(0, "a", [], {"title": title, "description": description}))

    # The peers' TF-IDF reads the tagger's join: every column, ". " where one ends, a missing one left out.
    assert peer_text("Navy Shirt", "colour: Navy Blue") == "Navy Shirt. colour: Navy Blue"
    assert (peer_text(None, "colour: Navy Blue"), peer_text("Navy Shirt", None)) == ("colour: Navy Blue", "Navy Shirt")

    out = tmp_path / "tagging_quality.json"
    variants = "cross_attention,title_only,peer,peer_image"
    tagging_quality.main(["--smoke", "--text-columns", *COLUMNS, "--data", str(catalogue), "--variants", variants,
                          "--out", str(out)])  # fmt: skip
    result = json.loads(out.read_text())
    assert result["args"]["text_columns"] == COLUMNS
    tuned = {f"{v} [val-tuned prior]" for v in ("cross_attention", "title_only")}  # the taggers' decision rule rows
    assert set(result["variants"]) == set(variants.split(",")) | tuned
    for name, variant in result["variants"].items():
        assert variant["settings"]["text_columns"] == COLUMNS, name  # what was asked
        if name not in tuned:  # a decision rule row reads its tagger's probabilities
            assert variant["info"]["text_columns"] == COLUMNS, name  # what the method read
