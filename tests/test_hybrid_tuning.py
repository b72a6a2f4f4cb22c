"""Hybrid search tuned when an index is built (the stored choice is the default of `search` and `serve`, explicit
options win, an index without BM25 stays dense) and vectors cut to their first dimensions (`export --dim`,
`index --dim`, queries cut alike)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLE_IMAGES, cli_error, run_cli

from multimodal import cli
from multimodal.search.export import load_export
from multimodal.search.hybrid_tuning import HALVES, configurations, ndcg, routed, winner
from multimodal.search.index import load_index
from multimodal.search.lexical import TOKEN_PATTERN
from multimodal.search.matryoshka import cut
from multimodal.search.query import Query, route_of, search_many, settled
from multimodal.search.shopper_queries import attribute_columns, shopper_queries, stopwords

COLUMNS = ["title", "gender", "articleType", "baseColour", "year"]


def export_of(products: pd.DataFrame, checkpoint: Path, out: Path, *extra: str) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    products.to_csv(out.with_suffix(".csv"), index=False)
    cli.main(["export", "--ckpt_path", str(checkpoint), "--input", str(out.with_suffix(".csv")), "--image_root",
              str(SAMPLE_IMAGES), "--out", str(out), "--columns", *COLUMNS, "--no_progress", *extra])  # fmt: skip
    return out


def lines(printed: str) -> list[dict]:
    return [json.loads(line) for line in printed.splitlines() if line.startswith("{")]


def ids(hits: list[dict]) -> list[str]:
    return [str(h["id"]) for h in hits]


@pytest.fixture(scope="module")
def catalogue(sample_df: pd.DataFrame) -> pd.DataFrame:
    return sample_df.iloc[::7].head(40).reset_index(drop=True)


@pytest.fixture(scope="module")
def export(trained: dict[str, Path], catalogue: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_of(catalogue, trained["retriever"], tmp_path_factory.mktemp("hybrid") / "emb")


def name_of(choice: dict) -> str:
    """The configuration name of stored query options ("dense", "rrf", "weighted@0.3")."""
    return choice["mode"] if choice["mode"] != "hybrid" else choice["fusion"] + (
        f"@{choice['weight']}" if choice["fusion"] == "weighted" else "")  # fmt: skip


# ------------------------------------------------------------------------------------------------ tuned hybrid
def test_ndcg_counts_the_known_item_twice() -> None:
    relevant, known = np.array([3, 5, 8]), np.array([5])
    assert ndcg([5, 3, 8], relevant, known) == pytest.approx(1.0)
    ideal = 2 + 1 / np.log2(3) + 1 / np.log2(4)
    assert ndcg([3, 5, 8], relevant, known) == pytest.approx((1 + 2 / np.log2(3) + 1 / np.log2(4)) / ideal)
    assert ndcg([3, 8, 9], relevant, known) == pytest.approx((1 + 1 / np.log2(3)) / ideal)
    assert ndcg([3, 8, 5], relevant) == pytest.approx(1.0)  # binary gains without a known item


def test_a_fusion_is_kept_only_when_it_beats_the_better_half_beyond_the_noise() -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.8, 200)
    per_query = {name: base.copy() for name, _ in configurations()}
    per_query["lexical"] = base - 0.1
    per_query["weighted@0.3"] = base + np.resize([0.21, -0.19], 200)  # 0.01 ahead on the mean; 2 s.e. are 0.028
    assert per_query["weighted@0.3"].mean() > base.mean() and winner(per_query)["name"] == "dense"
    per_query["weighted@0.3"] = base + 0.02 + rng.normal(0, 0.01, 200)  # ahead on almost every query
    assert winner(per_query) == {"name": "weighted@0.3", "mode": "hybrid", "fusion": "weighted", "weight": 0.3}
    rows = np.arange(200) < 100  # a route: the same rule on its own queries
    per_query["lexical"] = np.where(rows, base + 0.3, base - 0.1)
    assert winner(per_query, rows)["name"] == "lexical" and winner(per_query, ~rows)["name"] == "weighted@0.3"
    routes = routed(per_query, ["words" if r else "attributes" for r in rows])
    assert routes["words"]["mode"] == "lexical" and routes["words"]["queries"] == 100
    assert routes["attributes"]["score"] == routes["attributes"]["scores"]["weighted@0.3"]


def test_shopper_queries_are_seeded_and_their_relevant_products_hold_every_word_or_value(
    catalogue: pd.DataFrame,
) -> None:
    products = catalogue[["id", *COLUMNS]]
    attributes = attribute_columns(products, ["title"], None)
    assert "gender" in attributes and not {"title", "year", "id"} & set(attributes)  # years are numbers
    queries = shopper_queries(products, ["title"], attributes, 30, seed=3)
    again = shopper_queries(products, ["title"], attributes, 30, seed=3)
    assert [(q.text, q.relevant.tolist()) for q in queries] == [(q.text, q.relevant.tolist()) for q in again]
    assert {q.kind for q in queries} == {"words", "attributes"} and len({q.text for q in queries}) == len(queries)
    titles = [set(re.findall(r"\w+", t.lower())) for t in products["title"]]
    for q in queries:
        if q.kind == "words":  # every product whose title holds all the words; the known item among them
            assert set(q.text.split()) == set(q.terms)
            want = [r for r, t in enumerate(titles) if set(q.terms) <= t]
            read = [tuple(w for w in re.findall(TOKEN_PATTERN, t.lower()) if w not in stopwords())
                    for t in products["title"]]  # fmt: skip
            texts = {read[r] for r in q.known}
            assert set(q.known.tolist()) <= set(want) and len(texts) == 1
            assert q.known.tolist() == [r for r in range(len(products)) if read[r] in texts]
        else:  # every product with all the query's attribute values
            assert q.text == " ".join(v for _, v in q.terms) and {c for c, _ in q.terms} <= set(attributes)
            want = [r for r in range(len(products)) if all(products[c].iat[r] == v for c, v in q.terms)]
        assert q.relevant.tolist() == want and len(want) >= 1


def test_the_tuned_fusion_is_stored_and_is_the_default_explicit_options_win(
    export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from multimodal.search.query import QueryEncoder
    from multimodal.serve.search_api import SearchAPI

    out = tmp_path / "index"
    built = lines(run_cli(["index", export, "--out", out, "--lexical", "title", "--tune-hybrid", 60], capsys))[-1]
    index = load_index(out)
    stored = index.info["hybrid"]
    summary_keys = ("mode", "fusion", "weight", "score", "queries", "routes")
    assert built["hybrid"] == {k: stored[k] for k in summary_keys if k in stored}
    scores = stored["scores"]
    assert {"dense", "lexical", "rrf", "weighted@0.0", "weighted@0.5", "weighted@1.0"} <= set(scores)
    assert stored["score"] >= max(scores["dense"], scores["lexical"])  # never loses to a half
    assert stored["score"] == max(scores.values()) or stored["mode"] != "hybrid"  # a mix within noise: the half
    assert 0 < stored["queries"] <= 60 and stored["word_queries"] and stored["attribute_queries"]
    routes = stored["routes"]  # each route's winner, on the queries routed there: together never below the winner
    assert set(routes) <= {"words", "attributes"} and sum(r["queries"] for r in routes.values()) == stored["queries"]
    for route in routes.values():  # each route's winner: at least its better half on its queries
        assert route["score"] == route["scores"][name_of(route)] >= max(route["scores"][h] for h in HALVES)
    assert "women" in stored["attribute_terms"] or "men" in stored["attribute_terms"]
    text = " ".join(str(index.products["title"].iat[4]).split()[:3])
    encoder = QueryEncoder(index)
    route = route_of(stored, text)  # the text's route's winner (title words: mostly the words route)
    choice = {k: route[k] for k in ("mode", "fusion", "weight") if k in route}
    want = search_many(index, encoder, [Query(text=text, k=5, **choice)])[0]
    assert ids(lines(run_cli(["search", out, "--text", text, "-k", 5], capsys))) == ids(want)
    # a chosen weighted fusion (written here to be sure it differs from the plain RRF) is what a bare query gets
    (out / "index.json").write_text(json.dumps({**index.info, "hybrid": {"mode": "hybrid", "fusion": "weighted",
                                                                         "weight": 0.0}}))  # fmt: skip
    index = load_index(out)
    asked = [Query(text=text, k=8, **options) for options in ({"fusion": "weighted", "weight": 0.0, "mode": "hybrid"},
             {"mode": "dense"}, {"mode": "hybrid", "fusion": "rrf"}, {"mode": "hybrid", "fusion": "weighted",
             "weight": 1.0})]  # fmt: skip
    weighted, dense, rrf, all_dense = (ids(h) for h in search_many(index, encoder, asked))
    search = ["search", out, "--text", text, "-k", 8]
    assert ids(lines(run_cli(search, capsys))) == weighted != dense
    assert ids(lines(run_cli([*search, "--mode", "dense"], capsys))) == dense
    assert ids(lines(run_cli([*search, "--fusion", "rrf"], capsys))) == rrf
    assert ids(lines(run_cli([*search, "--weight", "1"], capsys))) == all_dense  # a weight alone: weighted hybrid
    seed = str(index.products["id"].iat[0])
    assert settled(index, Query(like=seed)).mode == "dense" and settled(index, Query(image=Path("x"))).mode == "dense"
    # routes: a query of attribute words, or with a word no title holds, takes the attributes route's options, any
    # other text the words route's
    routed = {"mode": "hybrid", "fusion": "rrf", "weight": 0.5, "attribute_terms": ["blue", "women"],
              "routes": {"attributes": {"mode": "dense"}, "words": {"mode": "lexical"}}}  # fmt: skip
    (out / "index.json").write_text(json.dumps({**index.info, "hybrid": routed}))
    index = load_index(out)
    assert settled(index, Query(text="Women Blue")).mode == "dense"  # stop words and case do not matter
    held = next(w for w in sorted(index.lexical.vocabulary) if w.isalpha() and w not in {"blue", "women"})
    assert settled(index, Query(text=f"women blue {held}")).mode == "lexical"  # a word some title holds
    assert settled(index, Query(text="women blue zqxvw")).mode == "dense"  # a word no title holds: a kind, not a lookup
    assert settled(index, Query(text="women blue", mode="hybrid")).mode == "hybrid"  # an explicit mode wins
    (out / "index.json").write_text(json.dumps({**index.info, "hybrid": {"mode": "hybrid", "fusion": "weighted",
                                                                         "weight": 0.0}}))  # fmt: skip
    index = load_index(out)
    # serve's /search: the same default, and the answer repeats the mode it used
    api = SearchAPI(str(out), max_pixels=2**24, reload_interval=0)
    api.load("cpu")
    answer = api.answer([api.decode({"text": text, "k": 8}), api.decode({"text": text, "k": 8, "mode": "dense"})])
    assert answer[0]["query"]["mode"] == "hybrid" and [h["id"] for h in answer[0]["results"]] == weighted
    assert answer[1]["query"]["mode"] == "dense" and [h["id"] for h in answer[1]["results"]] == dense


def test_without_bm25_the_default_stays_dense_and_nonsense_tuning_options_are_one_line_errors(
    export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_cli(["index", export, "--out", tmp_path / "dense"], capsys)
    index = load_index(tmp_path / "dense")
    assert "hybrid" not in index.info and settled(index, Query(text="red shirt")).mode == "dense"
    search = ["search", tmp_path / "dense", "--text", "red shirt", "-k", 5]
    assert run_cli(search, capsys) == run_cli([*search, "--mode", "dense"], capsys)
    # BM25 without tuning: hybrid with reciprocal-rank fusion
    run_cli(["index", export, "--out", tmp_path / "plain", "--lexical", "title", "--tune-hybrid", 0], capsys)
    plain = load_index(tmp_path / "plain")
    got = settled(plain, Query(text="red shirt"))
    assert "hybrid" not in plain.info and (got.mode, got.fusion, got.weight) == ("hybrid", "rrf", 0.5)
    build = ["index", export, "--out", tmp_path / "bad"]
    assert "add --lexical" in cli_error([*build, "--tune-hybrid", 5], capsys)
    assert "add --lexical" in cli_error([*build, "--tune-attributes", "gender"], capsys)
    assert "--tune-hybrid -1" in cli_error([*build, "--lexical", "title", "--tune-hybrid", -1], capsys)
    err = cli_error([*build, "--lexical", "title", "--tune-attributes", "gender,brand"], capsys)
    assert "--tune-attributes" in err and "'brand'" in err


# ------------------------------------------------------------------------------------------------ cut vectors
def test_dim_keeps_the_first_dimensions_renormalised_on_export_index_and_queries(
    export: Path,
    trained: dict[str, Path],
    catalogue: pd.DataFrame,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import faiss

    from multimodal.search.query import QueryEncoder

    _, full, products = load_export(export)
    width = full.shape[1]
    k = width // 4
    run_cli(["index", export, "--out", tmp_path / "cut", "--dim", k], capsys)
    run_cli(["index", export, "--out", tmp_path / "full"], capsys)
    index = load_index(tmp_path / "cut")
    assert (index.dim, index.info["dim"], index.info["cut_from"]) == (k, k, width)
    rows = np.array([index.rows_by_id[str(i)] for i in products["id"]])
    np.testing.assert_allclose(index.reconstruct(rows), cut(full, k), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(index.reconstruct(rows), axis=1), 1.0, atol=1e-5)

    def floats(folder: Path) -> int:  # the flat index's stored vector bytes
        loaded = load_index(folder)  # held: the inner index lives as long as its IndexIDMap2
        return faiss.downcast_index(loaded.shards[0].index).codes.size()

    assert floats(tmp_path / "cut") * width == floats(tmp_path / "full") * k == len(full) * 4 * k * width
    # a text query is cut the same way where it meets the index
    text = str(catalogue["title"].iat[2])
    query = cut(QueryEncoder(index).texts([text]), k)[0]
    expected = np.argsort(-(cut(full, k) @ query), kind="stable")[:5]
    printed = lines(run_cli(["search", tmp_path / "cut", "--text", text, "-k", 5], capsys))
    assert ids(printed) == [str(products["id"].iat[r]) for r in expected]
    np.testing.assert_allclose([p["score"] for p in printed], (cut(full, k) @ query)[expected], atol=1e-5)
    assert len(lines(run_cli(["search", tmp_path / "cut", "--like", products["id"].iat[0], "-k", 3], capsys))) == 3
    # export --dim: the same first dimensions, renormalised before the float16 rounding, and recorded
    small = export_of(catalogue, trained["retriever"], tmp_path / "emb-cut", "--dim", str(k))
    manifest, vectors, _ = load_export(small)
    assert (manifest["dim"], manifest["cut_from"], vectors.shape[1]) == (k, width, k)
    np.testing.assert_allclose(vectors, cut(full, k), atol=2e-3)
    run_cli(["index", small, "--out", tmp_path / "from-cut"], capsys)
    from_cut = load_index(tmp_path / "from-cut")
    assert (from_cut.dim, from_cut.info["cut_from"]) == (k, width)
    assert len(lines(run_cli(["search", tmp_path / "from-cut", "--text", text, "-k", 5], capsys))) == 5
    # an update with a full-width export of the same model is cut alike
    update = lines(run_cli(["index", tmp_path / "from-cut", "--add", export], capsys))[-1]
    assert update["replaced"] == len(full)
    after = load_index(tmp_path / "from-cut")
    rows = np.array([after.rows_by_id[str(i)] for i in products["id"]])
    np.testing.assert_allclose(after.reconstruct(rows), cut(full, k), atol=1e-6)


def test_bad_dim_is_a_one_line_error(
    export: Path, trained: dict[str, Path], catalogue: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    width = load_export(export)[1].shape[1]
    build = ["index", export, "--out", tmp_path / "index"]
    assert "at least 1" in cli_error([*build, "--dim", 0], capsys)
    err = cli_error([*build, "--dim", width + 1], capsys)
    assert f"--dim {width + 1} is larger than export" in err and f"({width} dimensions)" in err
    assert not (tmp_path / "index").exists()
    catalogue.head(4).to_csv(tmp_path / "few.csv", index=False)
    exporting = ["export", "--ckpt_path", trained["retriever"], "--input", tmp_path / "few.csv", "--image_root",
                 SAMPLE_IMAGES, "--out", tmp_path / "emb", "--no_progress"]  # fmt: skip
    err = cli_error([*exporting, "--dim", 4 * width], capsys)
    assert f"larger than the model's vectors ({width} dimensions)" in err
    assert "at least 1" in cli_error([*exporting, "--dim", -2], capsys)
    run_cli(["index", export, "--out", tmp_path / "index"], capsys)
    assert "--dim applies to a build" in cli_error(["index", tmp_path / "index", "--add", export, "--dim", 4], capsys)
