"""The paged, faceted ``/search`` the search page reads, over plain HTTP (no browser): facet counts over all of a
query's results checked against the catalogue itself, pages that continue each other, the filters to drop when
nothing matches, one-line 400s; the page's own files and the fields of ``/search`` in the OpenAPI schema; and the
page's columns chosen by ``multimodal serve --facets / --title_field / --display_fields``.

A real ``multimodal serve --index`` (subprocess, loopback port) over 120 sample products exported by the tiny
retriever, with BM25 over the titles (:mod:`search_page_fixtures`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from search_page_fixtures import N_PRODUCTS, PAGE, WORD, catalogue_counts, counts, ids, search, women_total
from search_page_fixtures import index as index  # fixtures, by name
from search_page_fixtures import products as products
from search_page_fixtures import service as service
from search_page_fixtures import stored as stored
from test_serve import Service

from multimodal import cli

PAGE_FOLDER = Path(cli.__file__).parent / "serve" / "page"


def test_facets_and_pages_of_search_over_http(service: Service, products: pd.DataFrame, stored: pd.DataFrame) -> None:
    browsed = search(service, browse="true", facets="true", k=PAGE)
    assert browsed["total"] == N_PRODUCTS and ids(browsed) == products["id"][:PAGE].tolist()
    assert "score" not in browsed["results"][0]
    facets = [f["column"] for f in browsed["facets"]]  # the catalogue's attributes; not its titles
    assert {"gender", "articleType", "baseColour", "season", "usage"} <= set(facets) and "title" not in facets
    assert counts(browsed["facets"]) == catalogue_counts(stored, facets)
    assert browsed["display"]["title"] == "title" and set(browsed["display"]["fields"]) <= set(facets)

    # a text query: its pages are consecutive slices of one list, its counts are over all of it
    first = search(service, text=WORD, mode="lexical", facets="true", k=PAGE)
    total = first["total"]
    assert PAGE < total < N_PRODUCTS
    second = search(service, text=WORD, mode="lexical", facets="true", k=PAGE, offset=PAGE)
    assert second["total"] == total and set(ids(second)).isdisjoint(ids(first))
    every = ids(search(service, text=WORD, mode="lexical", k=total, offset=0))
    assert every == ids(first) + ids(second) and [h["rank"] for h in second["results"]][0] == PAGE + 1
    found = stored.set_index("id").loc[every]
    assert counts(first["facets"]) == catalogue_counts(found, facets) == counts(second["facets"])

    # a facet value's count is what choosing it gives; two facets combine
    women = counts(first["facets"])["gender"]["Women"]
    narrowed = search(service, text=WORD, mode="lexical", facets="true", k=PAGE, filters={"gender": ["Women"]})
    assert narrowed["total"] == women and {h["gender"] for h in narrowed["results"]} == {"Women"}
    assert counts(narrowed["facets"])["gender"] == {"Women": women}
    kind, n = next(iter(counts(narrowed["facets"])["articleType"].items()))
    both = search(
        service, text=WORD, mode="lexical", facets="true", k=PAGE, filters={"gender": "Women", "articleType": [kind]}
    )
    assert both["total"] == n and all(h["gender"] == "Women" and h["articleType"] == kind for h in both["results"])

    # nothing matches: each filter to drop, with the results the query has without it
    men_only = products.groupby("articleType")["gender"].agg(set)
    men_only = men_only[men_only.map(lambda g: g == {"Men"})].index[0]
    empty = search(service, browse="true", facets="true", k=PAGE, filters={"gender": "Women", "articleType": men_only})
    assert empty["total"] == 0 and empty["results"] == []
    without = {"gender": int((products["articleType"] == men_only).sum()), "articleType": int(women_total(products))}
    assert [(s["drop"], s["count"]) for s in empty["suggestions"]] == sorted(
        [({"column": c, "values": [v]}, without[c]) for c, v in (("gender", "Women"), ("articleType", men_only))],
        key=lambda s: -s[1],
    )
    asked = {"text": WORD, "mode": "lexical", "facets": "true", "k": PAGE}  # a query: its results without each
    found = search(service, **asked, filters={"gender": "Women", "articleType": men_only})
    pairs = (("gender", "Women"), ("articleType", men_only))
    alone = {c: search(service, **asked, filters={c: v})["total"] for c, v in pairs}
    kept = [("articleType", alone["gender"]), ("gender", alone["articleType"])]  # dropped, and what is left
    assert alone["gender"] and found["total"] == 0
    assert [(s["drop"]["column"], s["count"]) for s in found["suggestions"]] == sorted(
        [(c, n) for c, n in kept if n], key=lambda s: -s[1]
    )
    typed = search(service, browse="true", facets="true", k=PAGE, filters={"gender": "Women"}, where="gender = 'Men'")
    assert {json.dumps(s["drop"]) for s in typed["suggestions"]} == {
        json.dumps({"column": "gender", "values": ["Women"]}), json.dumps({"where": "gender = 'Men'"})}  # fmt: skip

    # without offset, facets or browse: the plain answer of before, its top k those of page 1
    plain = search(service, text=WORD, k=5, mode="dense")
    assert "total" not in plain and ids(plain) == ids(search(service, text=WORD, k=5, mode="dense", offset=0))


def test_chosen_values_are_one_filter_expression_and_counts_are_per_value() -> None:
    """Quotes in values, a column name with a space and a numeric column; the facets found without settings."""
    from multimodal.search.facets import Facets, drops, selection_of, selection_where
    from multimodal.search.filters import Filter

    table = pd.DataFrame({
        "id": list("abcdef"), "image_path": [f"{i}.jpg" for i in "abcdef"],
        "name": ["Blue coat", "Red coat", "Blue hat", "Red hat", "Grey scarf", "Grey hat"],
        "brand name": ["O'Neill", "O'Neill", "Acme", "Acme", "Acme", None], "size": [38, 38, 40, 40, 42, 42],
        "notes": ["a note of many words here"] * 2 + ["another note of many words"] * 4,
    })  # fmt: skip
    facets = Facets.of(table)
    assert (facets.columns, facets.title, facets.display) == (["brand name", "size"], "name", ["brand name", "size"])
    chosen = selection_of({"brand name": "O'Neill", "size": [38, "40"]}, table)
    where = selection_where(chosen, table)
    assert where == "\"brand name\" IN ('O''Neill') AND size IN (38.0, 40.0)"
    rows = np.flatnonzero(Filter(where, table).mask())
    assert rows.tolist() == [0, 1]
    assert facets.counts(rows, chosen) == [
        {"column": "brand name", "values": [{"value": "O'Neill", "count": 2, "selected": True}]},
        {"column": "size", "values": [{"value": "38", "count": 2, "selected": True},
                                      {"value": "40", "count": 0, "selected": True}]},
    ]  # fmt: skip
    assert drops("size > 39", chosen, table) == [
        ({"column": "brand name", "values": ["O'Neill"]}, "(size IN (38.0, 40.0)) AND (size > 39)"),
        ({"column": "size", "values": ["38", "40"]}, "(\"brand name\" IN ('O''Neill')) AND (size > 39)"),
        ({"where": "size > 39"}, "(\"brand name\" IN ('O''Neill')) AND (size IN (38.0, 40.0))"),
    ]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"browse": "true", "filters": "[1]"}, "must be a JSON object"),
        ({"browse": "true", "filters": "{gender"}, "not valid JSON"),
        ({"browse": "true", "filters": '{"colour_name": "Red"}'}, "'colour_name'] are not in the index"),
        ({"browse": "true", "filters": '{"gender": [true]}'}, "must be texts or numbers"),
        ({"text": WORD, "rerank": "5", "offset": "24"}, "rerank"),
        ({"browse": "true", "text": WORD}, "send no text"),
        ({"browse": "true", "offset": "-1"}, "'offset'=-1"),
        ({"browse": "true", "where": "gender = "}, "--where"),
        ({"k": "3"}, "browse=true"),
    ],
)
def test_bad_page_requests_are_one_line_400s(service: Service, fields: dict[str, str], message: str) -> None:
    answer = httpx.get(service.url + "/search", params=fields, timeout=60)
    assert answer.status_code == 400 and message in answer.json()["detail"], answer.text


def test_the_page_is_three_files_served_with_their_types(service: Service) -> None:
    page = httpx.get(service.url + "/")
    assert page.headers["content-type"].startswith("text/html")
    assert '<script src="page.js"></script>' in page.text and '<link rel="stylesheet" href="page.css">' in page.text
    assert "<style" not in page.text and "<script>" not in page.text  # nothing inline, nothing from another host
    assert "http" not in page.text.lower().replace("http-equiv", "")
    for name, kind in (("page.js", "text/javascript"), ("page.css", "text/css")):
        answer = httpx.get(f"{service.url}/{name}")
        assert answer.status_code == 200 and answer.headers["content-type"].startswith(kind), (name, answer.headers)
        assert answer.content == (PAGE_FOLDER / name).read_bytes()
    schema = httpx.get(service.url + "/openapi.json").json()["paths"]["/search"]
    asked = {p["name"]: p["schema"]["type"] for p in schema["get"]["parameters"]}
    form = schema["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    page_fields = {"offset": "integer", "facets": "boolean", "filters": "string", "browse": "boolean"}
    assert (
        page_fields.items() <= asked.items() and page_fields.items() <= {k: v["type"] for k, v in form.items()}.items()
    )


@pytest.fixture(scope="module")
def chosen(index: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The same index served with the page's columns chosen (facets in an order of their own, spaces around)."""
    log = tmp_path_factory.mktemp("search-page-columns") / "serve.log"
    svc = Service(["--index", index, "--facets", "season, gender", "--title_field", "articleType",
                   "--display_fields", "baseColour,usage"], log)  # fmt: skip
    yield svc
    assert svc.stop() == 0, svc.tail()


def test_serve_options_choose_the_pages_columns(service: Service, chosen: Service, stored: pd.DataFrame) -> None:
    found = search(service, browse="true", facets="true", k=PAGE)
    assert found["display"]["title"] == "title" and len(found["facets"]) > 2
    for asked in ({"browse": "true"}, {"text": WORD, "mode": "lexical"}):
        answer = search(chosen, **asked, facets="true", k=PAGE)
        assert answer["display"] == {"title": "articleType", "fields": ["baseColour", "usage"]}
        assert [f["column"] for f in answer["facets"]] == ["season", "gender"]
        rows = stored.set_index("id").loc[ids(search(chosen, **asked, k=answer["total"], offset=0))]
        assert counts(answer["facets"]) == catalogue_counts(rows, ["season", "gender"])
    assert ids(search(chosen, text=WORD, k=5)) == ids(search(service, text=WORD, k=5))  # the ranking is the same


@pytest.mark.parametrize(
    ("option", "given", "missing"),
    [("--facets", "gender,colour", "colour"), ("--title_field", "name", "name"),
     ("--display_fields", "usage,id", "id")],  # the products table's own id is no field to show
)  # fmt: skip
def test_a_page_column_the_index_lacks_is_a_one_line_error(
    index: Path, option: str, given: str, missing: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve", "--index", str(index), option, given])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"error: {option}: column(s) ['{missing}'] are not in the index (it stores: title, "), err
    assert "gender" in line and "image_path" not in line
    with pytest.raises(SystemExit):
        cli.main(["serve", "--tagger", "no.ckpt", option, given])
    assert "the search page's columns need --index" in capsys.readouterr().err
