"""Retail search: the filter language, filtered search vs a brute-force filter of exact search, BM25 and hybrid
modes, live add / remove / replace, sharded indexes vs one index, and the automatic index choice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLE_IMAGES, cli_error, run_cli

from multimodal import cli
from multimodal.errors import UserError
from multimodal.search import index as index_module
from multimodal.search.build import build_from_export, build_index
from multimodal.search.choice import choose, parse_bytes, tune
from multimodal.search.export import load_export
from multimodal.search.filters import Filter
from multimodal.search.index import LABEL, SearchIndex, load_index
from multimodal.search.lexical import reciprocal_rank_fusion
from multimodal.search.query import Query, search_many

COLUMNS = ["title", "gender", "articleType", "baseColour", "year"]
FILTERS = [
    "gender = 'Men'",
    "gender = 'Men' AND year >= 2012",
    "articleType IN ('Watches', 'Tshirts', 'Casual Shoes') OR baseColour = 'Black'",
    "NOT gender = 'Men' AND year < 2016",
    "year = 2011 AND (gender = 'Women' OR gender = 'Unisex')",
    "baseColour = 'No such colour'",
]


def export_of(products: pd.DataFrame, checkpoint: Path, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    products.to_csv(out.with_suffix(".csv"), index=False)
    cli.main(["export", "--ckpt_path", str(checkpoint), "--input", str(out.with_suffix(".csv")), "--image_root",
              str(SAMPLE_IMAGES), "--out", str(out), "--columns", *COLUMNS, "--no_progress"])  # fmt: skip
    return out


@pytest.fixture(scope="module")
def catalogue(sample_df: pd.DataFrame) -> pd.DataFrame:
    return sample_df.head(150).reset_index(drop=True)


@pytest.fixture(scope="module")
def export(trained: dict[str, Path], catalogue: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_of(catalogue.head(120), trained["retriever"], tmp_path_factory.mktemp("retail") / "emb")


@pytest.fixture(scope="module")
def lexical_index(export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("retail-index") / "index"
    cli.main(["index", str(export), "--out", str(out), "--lexical", "title"])
    return out


# ------------------------------------------------------------------------------------------------ filter grammar
TABLE = pd.DataFrame(
    {
        "id": ["1", "2", "3", "4", "5"],
        "gender": ["Men", "Women", "Men", None, "Unisex"],
        "year": ["2011", "2012", "2016", "2013", None],
        "title": ["Nike Air Max 90", "It's a dress", "Puma Shoes", "Watch", "Bag"],
        "price": [10.0, 49.99, 5.5, 100.0, 20.0],
        LABEL: np.arange(5),
    }
)


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("gender = 'Men'", ["1", "3"]),
        ("gender = 'Men' AND year >= 2012", ["3"]),
        ("gender != 'Men'", ["2", "5"]),  # a missing value never satisfies a comparison
        ("NOT gender = 'Men'", ["2", "4", "5"]),  # NOT inverts the whole comparison
        ("year IN (2011, 2013)", ["1", "4"]),
        ("gender NOT IN ('Men', 'Women')", ["4", "5"]),
        ("(gender = 'Women' OR price < 6) AND NOT year > 2015", ["2"]),
        ("title = 'It''s a dress'", ["2"]),
        ('"price" >= 20 and price <= 100', ["2", "4", "5"]),
        ("year = '2012' or gender in ('Unisex')", ["2", "5"]),  # quoted: compared as text; keywords in any case
        ("price > 1e1", ["2", "4", "5"]),
        ("year > 2020", []),
    ],
)
def test_filter_expressions_select_the_right_rows(expr: str, expected: list[str]) -> None:
    mask = Filter(expr, TABLE, frozenset({LABEL})).mask()
    assert TABLE["id"][mask].tolist() == expected


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("colour = 'Black'", "unknown column 'colour'"),
        (f"{LABEL} = 1", f"unknown column '{LABEL}'"),
        ("gender = 5", "column 'gender' holds text"),
        ("price = '5'", "column 'price' is numeric"),
        ("year IN (2011, 'x')", "mixes numbers and texts"),
        ("gender = ", "expected a value"),
        ("gender 'Men'", "expected a comparison"),
        ("gender == 'Men'", "expected a value"),
        ("(gender = 'Men'", "expected )"),
        ("gender = 'Men' AND", "expected a column name"),
        ("gender = 'Men' price > 1", "unexpected 'price'"),
        ("gender = 'Men", "cannot read"),
        ("__import__('os').system('true')", "cannot read"),
        ("__import__('os')", "expected a comparison"),
        ("gender = 'Men'; DROP TABLE x", "cannot read"),
        ("", "empty filter"),
    ],
)
def test_bad_filter_expressions_are_one_line_errors(expr: str, message: str) -> None:
    with pytest.raises(UserError) as err:
        Filter(expr, TABLE, frozenset({LABEL})).mask()
    assert message in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------------ filtered search
def brute_force(vectors: np.ndarray, query: np.ndarray, mask: np.ndarray, k: int) -> list[int]:
    """Exact search, then the filter: the reference a filtered index search must equal."""
    order = np.argsort(-(vectors @ query), kind="stable")
    return [int(r) for r in order if mask[r]][:k]


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
@pytest.mark.parametrize("exact_subset", [True, False])
def test_filtered_search_equals_a_brute_force_filter_of_exact_search(
    export: Path, kind: str, exact_subset: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not exact_subset:  # every filter goes through the FAISS selector (widened nprobe / efSearch), not the subset
        monkeypatch.setattr(index_module, "EXACT_SUBSET", 0)
    build_from_export(export, tmp_path / "index", kind)  # type: ignore[arg-type]
    index = load_index(tmp_path / "index")
    _, vectors, products = load_export(export)
    queries = vectors[::7]
    k = 10
    for expr in FILTERS:
        mask = Filter(expr, index.products, frozenset({LABEL})).mask()
        scores, rows = index.search(queries, k, mask)
        for q, r, s in zip(queries, rows, scores, strict=True):
            truth = brute_force(vectors, q, mask, k)
            found = [int(x) for x in r if x >= 0]
            assert len(found) == min(k, int(mask.sum())), (expr, kind)  # k hits whenever k products match
            assert mask[found].all(), (expr, kind)
            # the same products as the reference, but for ties (equal scores may come in either order)
            assert np.allclose(s[: len(found)], vectors[truth] @ q, atol=1e-5), (expr, kind, found, truth)
            assert np.allclose(s[: len(found)], vectors[found] @ q, atol=1e-5)


def test_search_command_applies_the_filter(lexical_index: Path, capsys: pytest.CaptureFixture[str]) -> None:
    products = load_index(lexical_index).products
    seed = products["id"].iat[0]
    lines = run_cli(
        ["search", lexical_index, "--like", seed, "-k", 8, "--where", "gender = 'Men' AND year >= 2011"], capsys
    )
    hits = [json.loads(line) for line in lines.splitlines()]
    assert len(hits) == 8 and all(h["gender"] == "Men" and int(h["year"]) >= 2011 for h in hits)
    err = cli_error(["search", lexical_index, "--like", seed, "--where", "colour = 'Red'"], capsys)
    assert "unknown column 'colour'" in err
    err = cli_error(["search", lexical_index, "--like", seed, "--where", "year = 'x' OR gender > 3"], capsys)
    assert "column 'gender' holds text" in err


# ------------------------------------------------------------------------------------------------ lexical, hybrid
def test_lexical_mode_finds_exact_words_and_hybrid_fuses_both_lists(
    lexical_index: Path, trained: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from multimodal.search.query import QueryEncoder

    index = load_index(lexical_index)
    title = str(index.products["title"].iat[5])
    hits = [
        json.loads(x)
        for x in run_cli(["search", lexical_index, "--text", title, "--mode", "lexical", "-k", 5], capsys).splitlines()
    ]
    assert hits[0]["title"] == title and hits[0]["score"] > hits[-1]["score"]
    encoder = QueryEncoder(index)
    dense, lexical, hybrid = search_many(
        index,
        encoder,
        [Query(text=title, k=index.count, mode=m) for m in ("dense", "lexical")]
        + [Query(text=title, k=10, mode="hybrid", fusion="rrf")],  # the index's tuned fusion otherwise
    )
    rows = index.rows_by_id
    expected = reciprocal_rank_fusion(
        [np.array([rows[str(h["id"])] for h in dense[:100]]), np.array([rows[str(h["id"])] for h in lexical[:100]])]
    )[:10]
    assert [str(h["id"]) for h in hybrid] == [str(index.products["id"].iat[r]) for r, _ in expected]
    assert [h["score"] for h in hybrid] == pytest.approx([s for _, s in expected])
    weighted = search_many(index, encoder, [Query(text=title, k=10, mode="hybrid", fusion="weighted", weight=1.0)])[0]
    assert [h["id"] for h in weighted] == [h["id"] for h in dense[:10]]  # all weight on dense: the dense order
    filtered = search_many(index, encoder, [Query(text=title, k=5, mode="hybrid", where="gender = 'Women'")])[0]
    assert filtered and all(h["gender"] == "Women" for h in filtered)


def test_lexical_mode_mistakes_are_one_line_errors(
    export: Path, lexical_index: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_cli(["index", export, "--out", tmp_path / "dense-only"], capsys)
    err = cli_error(["search", tmp_path / "dense-only", "--text", "shoes", "--mode", "hybrid"], capsys)
    assert "needs a BM25 index" in err and "--lexical" in err
    seed = load_index(lexical_index).products["id"].iat[0]
    assert "needs a text query" in cli_error(["search", lexical_index, "--like", seed, "--mode", "lexical"], capsys)
    err = cli_error(["index", export, "--out", tmp_path / "bad", "--lexical", "title,brand"], capsys)
    assert "'brand'" in err and "not in the export" in err


# ------------------------------------------------------------------------------------------------ live updates
@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_live_add_remove_and_replace_without_a_rebuild(
    kind: str,
    export: Path,
    catalogue: pd.DataFrame,
    trained: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tmp_path / "index"
    run_cli(["index", export, "--out", folder, "--index", kind, "--lexical", "title"], capsys)
    before = load_index(folder)
    _, old_vectors, old_products = load_export(export)
    # the new export: 10 new products, and product 3 again with another product's photo and title (a replacement)
    replaced_id = str(old_products["id"].iat[3])
    donor = catalogue.iloc[140]
    changed = catalogue.iloc[[3]].assign(image=donor["image"], title=donor["title"])
    new = export_of(pd.concat([catalogue.iloc[120:130], changed]), trained["retriever"], tmp_path / "new")
    _, new_vectors, new_products = load_export(new)
    gone = [str(i) for i in old_products["id"].iloc[[10, 20, 30]]]
    (tmp_path / "gone.txt").write_text("\n".join([*gone, "no-such-id", ""]) + "\n")
    printed = run_cli(["index", folder, "--add", new, "--remove", tmp_path / "gone.txt"], capsys)
    summary = json.loads(printed.splitlines()[-1])
    counts = {k: summary[k] for k in ("added", "replaced", "removed", "not_found", "count", "not_found_ids")}
    assert counts == {"added": 10, "replaced": 1, "removed": 3, "not_found": 1, "count": 127,
                      "not_found_ids": ["no-such-id"]}  # fmt: skip
    after = load_index(folder)
    assert after.count == before.count + 10 - 3
    ids = lambda hits: [str(h["id"]) for h in hits]  # noqa: E731
    # add -> found: each new product is the nearest to its own vector, and BM25 finds its title
    for vector, pid, title in zip(new_vectors, new_products["id"], new_products["title"], strict=True):
        _, rows = after.search(vector[None], 1)
        assert str(after.products["id"].iat[rows[0, 0]]) == str(pid)
        lexical = search_many(after, None, [Query(text=str(title), k=after.count, mode="lexical")])[0]
        assert str(pid) in ids(lexical)
    # remove -> never returned, by any query, dense or lexical, filtered or not
    for vector in old_vectors:
        for allowed in (None, np.ones(after.count, bool)):
            _, rows = after.search(vector[None], after.count, allowed)
            found = set(after.products["id"].iloc[rows[0][rows[0] >= 0]].astype(str))
            assert not found & set(gone) and len(found) == after.count
    assert "not in the index" in cli_error(["search", folder, "--like", gone[0]], capsys)
    # replace -> the new vector and the new metadata, the old ones gone
    row = after.rows_by_id[replaced_id]
    assert np.allclose(after.reconstruct(np.array([row]))[0], new_vectors[-1], atol=1e-3 if kind == "flat" else 1e-2)
    assert after.products["title"].iat[row] == donor["title"]
    _, rows = after.search(old_vectors[3][None], 1)
    assert int(rows[0, 0]) == row or not np.allclose(after.reconstruct(rows[0])[0], old_vectors[3])
    # an update is a new build swapped in: the previous build is still complete on disk for readers on it
    assert load_index(before.folder).count == before.count


def test_updates_refuse_another_models_export(export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    run_cli(["index", export, "--out", tmp_path / "index"], capsys)
    manifest = json.loads((export / "export.json").read_text())
    fake = tmp_path / "fake-export"
    shutil.copytree(export, fake)
    (fake / "export.json").write_text(json.dumps({**manifest, "checkpoint_sha256": "0" * 64}))
    err = cli_error(["index", tmp_path / "index", "--add", fake], capsys)
    assert "another model" in err
    assert "no such file" in cli_error(["index", tmp_path / "index", "--remove", tmp_path / "none.txt"], capsys)
    assert "drop --out" in cli_error(["index", tmp_path / "index", "--add", export, "--out", tmp_path / "o"], capsys)


# ------------------------------------------------------------------------------------------------ shards
@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_sharded_index_returns_what_one_index_returns(
    export: Path, kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_cli(["index", export, "--out", tmp_path / "one", "--index", kind, "--nprobe", "64"], capsys)
    run_cli(["index", export, "--out", tmp_path / "four", "--index", kind, "--nprobe", "64", "--shards", "4"], capsys)
    one, four = load_index(tmp_path / "one"), load_index(tmp_path / "four")
    assert len(four.shards) == 4 and sorted(s.ntotal for s in four.shards)[0] > 0
    assert sum(s.ntotal for s in four.shards) == one.count
    _, vectors, _ = load_export(export)
    for allowed in (None, Filter("gender = 'Men'", one.products, frozenset({LABEL})).mask()):
        s1, r1 = one.search(vectors, 10, allowed)
        s4, r4 = four.search(vectors, 10, allowed)
        if kind == "flat":  # exact search: the merged top-k is the one index's top-k
            assert np.allclose(s1, s4, atol=1e-6)
            assert (r1 == r4).mean() > 0.99  # equal but for ties between equal scores
        else:  # each shard has its own cells; with every cell searched both are exact
            assert np.allclose(s1, s4, atol=1e-5)


# ------------------------------------------------------------------------------------------------ index choice
def test_auto_index_choice_follows_size_and_memory_budget() -> None:
    assert choose(5_000, 256, None)["kind"] == "flat"
    assert choose(500_000, 256, parse_bytes("4GB"))["kind"] == "hnsw"
    assert choose(5_000_000, 256, parse_bytes("32GB"))["kind"] == "ivf"
    pq = choose(5_000_000, 256, parse_bytes("1GB"))
    assert pq["kind"] == "ivfpq" and not pq["options"]["opq"] and pq["memory_bytes"] <= parse_bytes("1GB")
    big = choose(100_000_000, 128, parse_bytes("4GB"))
    assert big["kind"] == "ivfpq" and big["options"]["opq"] and big["memory_bytes"] <= parse_bytes("4GB")
    # a shard gets the cells one index of the whole catalogue would have (neighbours are spread over shards)
    sharded = choose(5_000_000, 256, parse_bytes("32GB"), shards=4)
    assert sharded["kind"] == "ivf" and sharded["options"]["nlist"] == choose(5_000_000, 256, None)["options"]["nlist"]
    with pytest.raises(UserError, match="too small"):
        choose(1_000_000_000, 128, parse_bytes("1GB"))
    with pytest.raises(UserError, match="not a size"):
        parse_bytes("lots")


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_tuning_reaches_the_target_recall_on_held_out_queries(kind: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8000, 48)).astype(np.float32)  # no clusters: approximate search is hard
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    options = {"nprobe": 1} if kind == "ivf" else {"ef_search": 16}
    shard = build_index(x, kind, hnsw_m=8, **options)  # type: ignore[arg-type]
    products = pd.DataFrame({"id": [str(i) for i in range(len(x))], LABEL: np.arange(len(x))})
    index = SearchIndex([shard], products, {"kind": kind, "options": dict(options)})
    low = tune(index, x, None, 300)["recall@10_vs_exact"]
    tuned = tune(index, x, 0.95, 300)
    assert tuned["target_met"] and tuned["recall@10_vs_exact"] >= 0.95 > low
    knob = "nprobe" if kind == "ivf" else "ef_search"
    assert index.info["options"][knob] == tuned["tuned"][knob] > options[knob]


def test_index_auto_records_its_choice(export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    printed = json.loads(
        run_cli(["index", export, "--out", tmp_path / "auto", "--index", "auto", "--memory_budget", "1GB"], capsys)
    )
    assert printed["kind"] == "flat" and "exact" in printed["reason"]
    info = json.loads((tmp_path / "auto" / "index.json").read_text())
    assert info["choice"]["memory_bytes"] > 0 and info["kind"] == "flat"
    err = cli_error(["index", export, "--out", tmp_path / "x", "--index", "auto", "--memory_budget", "many"], capsys)
    assert "not a size" in err


def test_the_faiss_selector_keeps_only_allowed_products(monkeypatch: pytest.MonkeyPatch) -> None:
    """Allowed products with the lowest labels only: FAISS must not read past the bitmap for the others."""
    monkeypatch.setattr(index_module, "EXACT_SUBSET", 0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20_000, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    products = pd.DataFrame({"id": [str(i) for i in range(len(x))], LABEL: np.arange(len(x))})
    for kind in ("flat", "ivf", "hnsw"):
        index = SearchIndex([build_index(x, kind, hnsw_m=8)], products, {"kind": kind, "options": {}})  # type: ignore[arg-type]
        allowed = np.zeros(len(x), bool)
        allowed[[1, 5, 9, 12, 14]] = True
        _, rows = index.search(x[::50], 5, allowed)
        assert set(rows.ravel().tolist()) <= {1, 5, 9, 12, 14}, kind
        assert (rows >= 0).all(), kind
