"""The search page as a shopper meets it: a photo grid with the catalogue's own fields, facets counted by the service
over a query's results, pages, "more like this", a photo dropped or picked, a way out of an empty result, and ids,
scores and modes only in the debug view.

A real ``multimodal serve --index`` (subprocess, loopback port) over 120 sample products exported by the tiny
retriever, with BM25 over the titles; the paged, faceted ``/search`` is checked over plain HTTP against the catalogue
itself, and the page is driven in headless Chromium against that same ``/search``. With
``SEARCH_PAGE_SCREENSHOTS=docs/images`` the browser tests write the page's screenshots there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLE_IMAGES
from test_serve import Service, browser

from multimodal import cli

N_PRODUCTS, PAGE, WORD = 120, 24, "black"  # WORD: a title word of more than PAGE products
SHOTS = os.environ.get("SEARCH_PAGE_SCREENSHOTS")  # a folder for the page's screenshots (docs/images)


@pytest.fixture(scope="module")
def products(sample_df: pd.DataFrame) -> pd.DataFrame:
    return sample_df.iloc[::7].head(N_PRODUCTS).reset_index(drop=True)


@pytest.fixture(scope="module")
def index(trained: dict[str, Path], products: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("search-page")
    products.to_csv(root / "catalogue.csv", index=False)
    cli.main(["export", "--ckpt_path", str(trained["retriever"]), "--input", str(root / "catalogue.csv"),
              "--image_root", str(SAMPLE_IMAGES), "--out", str(root / "emb"), "--no_progress"])  # fmt: skip
    cli.main(["index", str(root / "emb"), "--out", str(root / "index"), "--lexical", "title"])
    return root / "index"


@pytest.fixture(scope="module")
def stored(index: Path) -> pd.DataFrame:
    """The index's products table as the export stored it (a catalogue's "NA" is a missing value there)."""
    from multimodal.search.index import load_index

    return load_index(index).products


@pytest.fixture(scope="module")
def service(index: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    log = tmp_path_factory.mktemp("search-page-serve") / "serve.log"
    svc = Service(["--index", index, "--max_batch_size", "4", "--batch_timeout", "0.01"], log)
    yield svc
    assert svc.stop() == 0, svc.tail()


def search(service: Service, **fields: Any) -> dict[str, Any]:
    """``GET /search`` (``filters`` as a dict), which must answer 200."""
    if "filters" in fields:
        fields["filters"] = json.dumps(fields["filters"])
    answer = httpx.get(service.url + "/search", params=fields, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()


def ids(answer: dict[str, Any]) -> list[str]:
    return [hit["id"] for hit in answer["results"]]


def counts(facets: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    return {f["column"]: {v["value"]: v["count"] for v in f["values"]} for f in facets}


def catalogue_counts(rows: pd.DataFrame, columns: list[str]) -> dict[str, dict[str, int]]:
    return {c: rows[c].dropna().value_counts().to_dict() for c in columns}


def women_total(products: pd.DataFrame) -> int:
    return int((products["gender"] == "Women").sum())


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


# ------------------------------------------------------------------------------------------------- browser
needs_browser = pytest.mark.skipif(
    browser() is None, reason="headless Chromium not installed (apt-get install chromium chromium-driver)"
)


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as Driver

    chromium, driver_path = browser()  # type: ignore[misc]
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tmp_path_factory.mktemp("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,900", f"--user-data-dir={profile}"):  # fmt: skip
        options.add_argument(flag)
    chrome = webdriver.Chrome(service=Driver(driver_path), options=options)
    yield chrome
    chrome.quit()


def settled(driver: Any) -> str:
    """Wait until the page has its answer (no search running, every photo shown); the status line."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 60).until(lambda d: d.execute_script(
        "const s = document.getElementById('status').textContent;"
        "const imgs = [...document.querySelectorAll('#results .hit img')];"
        "return !/^(Searching|Loading)/.test(s) && imgs.every(i => i.complete && i.naturalWidth > 0);"))  # fmt: skip
    return driver.find_element("id", "status").text


def open_page(driver: Any, service: Service, address: str = "/") -> str:
    driver.get(service.url + address)
    return settled(driver)


def cards(driver: Any) -> list[str]:
    return driver.execute_script("return [...document.querySelectorAll('#results .hit')].map(c => c.dataset.id);")


def shown_counts(driver: Any) -> dict[str, dict[str, int]]:
    """The facet counts the page shows (those behind "show more" too)."""
    rows = driver.execute_script(
        "return [...document.querySelectorAll('.facet-value')]"
        ".map(b => [b.dataset.column, b.dataset.value, b.querySelector('.count').textContent]);"
    )
    out: dict[str, dict[str, int]] = {}
    for column, value, count in rows:
        out.setdefault(column, {})[value] = int(count)
    return out


def click(driver: Any, element: Any) -> None:
    """A real click, the element first brought to the middle of the window (the search bar stays at the top)."""
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
    element.click()


def facet(driver: Any, column: str, value: str) -> Any:
    return driver.find_element("css selector", f'.facet-value[data-column="{column}"][data-value="{value}"]')


def screenshot(driver: Any, name: str) -> None:
    if SHOTS:
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(driver).move_to_element(driver.find_element("tag name", "h1")).perform()  # no hover left over
        driver.execute_script("window.scrollTo(0, 0);")
        driver.save_screenshot(str(Path(SHOTS) / name))


@needs_browser
def test_a_facet_click_narrows_the_results_and_shows_the_servers_counts(service: Service, driver: Any) -> None:
    assert open_page(driver, service).startswith(f"{N_PRODUCTS} products in the catalogue")
    assert len(cards(driver)) == PAGE
    assert shown_counts(driver) == counts(search(service, browse="true", facets="true", k=PAGE)["facets"])
    click(driver, facet(driver, "gender", "Women"))
    settled(driver)
    api = search(service, browse="true", facets="true", k=PAGE, filters={"gender": ["Women"]})
    assert cards(driver) == ids(api) and shown_counts(driver) == counts(api["facets"])
    kind = next(iter(counts(api["facets"])["articleType"]))
    click(driver, facet(driver, "articleType", kind))  # a second facet combines with the first
    settled(driver)
    api = search(service, browse="true", facets="true", k=PAGE, filters={"gender": ["Women"], "articleType": [kind]})
    assert cards(driver) == ids(api) and shown_counts(driver) == counts(api["facets"])
    assert driver.find_element("id", "chips").text.splitlines()[:4] == [
        "Gender: Women",
        "×",
        f"Article type: {kind}",
        "×",
    ]
    click(driver, facet(driver, "gender", "Women"))  # clicked again: taken back
    settled(driver)
    assert cards(driver) == ids(search(service, browse="true", facets="true", k=PAGE, filters={"articleType": [kind]}))

    driver.find_element("id", "q").send_keys(WORD)  # a query keeps the chosen facet; taken back, all its results
    click(driver, driver.find_element("css selector", "#search button[type=submit]"))
    api = search(service, text=WORD, facets="true", k=PAGE, filters={"articleType": [kind]})
    assert settled(driver) == f"{api['total']} results for “{WORD}”" and cards(driver) == ids(api)
    click(driver, facet(driver, "articleType", kind))
    settled(driver)
    api = search(service, text=WORD, facets="true", k=PAGE)
    assert cards(driver) == ids(api) and shown_counts(driver) == counts(api["facets"])
    card = driver.find_element("css selector", "#results .hit")
    hit = api["results"][0]
    fields = dict.fromkeys(hit[c] for c in api["display"]["fields"] if hit[c])  # a value shown once
    assert card.text.splitlines()[:2] == [hit["title"], " · ".join(fields)]
    screenshot(driver, "search-page.png")
    click(driver, facet(driver, "gender", "Men"))
    settled(driver)
    screenshot(driver, "search-page-facets.png")


@needs_browser
def test_show_more_loads_the_next_page(service: Service, driver: Any) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    total = search(service, text=WORD, facets="true", k=PAGE)["total"]
    assert open_page(driver, service, f"/?q={WORD}").startswith(f"{total} results for")
    first = cards(driver)
    assert len(first) == PAGE
    click(driver, driver.find_element("id", "more"))
    WebDriverWait(driver, 60).until(lambda d: len(cards(d)) > PAGE)
    settled(driver)
    following = cards(driver)[PAGE:]
    assert cards(driver)[:PAGE] == first and following and set(following).isdisjoint(first)
    assert following == ids(search(service, text=WORD, facets="true", k=PAGE, offset=PAGE))
    assert not driver.find_element("id", "more").is_displayed()  # every result shown


@needs_browser
def test_a_photo_picked_or_dropped_searches_by_that_photo(service: Service, driver: Any, products) -> None:
    def by_photo(name: str) -> dict[str, Any]:
        photo = (SAMPLE_IMAGES / name).read_bytes()
        data = {"k": PAGE, "offset": 0, "facets": "true"}
        return httpx.post(service.url + "/search", files={"image": (name, photo, "image/jpeg")}, data=data).json()

    open_page(driver, service)
    picked = products["image"][3]
    driver.find_element("id", "photo").send_keys(str(SAMPLE_IMAGES / picked))
    assert settled(driver) == f"{N_PRODUCTS} results for your photo"
    assert cards(driver) == ids(by_photo(picked)) and len(cards(driver)) == PAGE
    assert driver.find_element("css selector", "#asking .chip img").is_displayed()  # the photo searched by

    open_page(driver, service)
    dropped = products["image"][9]
    driver.execute_async_script(
        "const [url, done] = arguments;"
        "fetch(url).then(r => r.blob()).then(blob => {"
        "  const data = new DataTransfer();"
        "  data.items.add(new File([blob], 'dropped.jpg', {type: blob.type}));"
        "  for (const kind of ['dragenter', 'dragover', 'drop'])"
        "    document.querySelector('main').dispatchEvent("
        "      new DragEvent(kind, {bubbles: true, cancelable: true, dataTransfer: data}));"
        "  done();"
        "});",
        f"/images/{dropped}",
    )  # fmt: skip
    assert settled(driver) == f"{N_PRODUCTS} results for your photo"
    assert cards(driver) == ids(by_photo(dropped))
    assert "dragging" not in driver.find_element("tag name", "body").get_attribute("class")


@needs_browser
def test_an_impossible_filter_combination_offers_a_filter_to_drop(service: Service, driver: Any, products) -> None:
    open_page(driver, service)
    click(driver, facet(driver, "gender", "Women"))
    settled(driver)
    click(driver, driver.find_element("id", "advanced-toggle"))  # the typed filter, behind "Advanced"
    driver.find_element("id", "where").send_keys("gender = 'Men'")
    click(driver, driver.find_element("css selector", "#search button[type=submit]"))
    assert settled(driver) == "0 products match the filters" and cards(driver) == []
    empty = driver.find_element("id", "empty")
    assert empty.is_displayed() and "No products match with these filters." in empty.text
    offers = {b.text: b for b in empty.find_elements("css selector", "button.drop-filter")}
    men = int((products["gender"] == "Men").sum())
    drop_women, drop_typed = (
        f"Drop Gender: Women {men} results",
        f"Drop filter gender = 'Men' {women_total(products)} results",
    )
    assert list(offers) == sorted([drop_women, drop_typed], key=lambda s: -int(s.split()[-2]))  # most results first
    screenshot(driver, "search-page-empty.png")
    click(driver, offers[drop_women])
    assert settled(driver) == f"{men} products match the filters"
    assert not empty.is_displayed() and len(cards(driver)) == PAGE
    assert cards(driver) == ids(search(service, browse="true", facets="true", k=PAGE, where="gender = 'Men'"))


@needs_browser
def test_ids_scores_and_modes_only_in_the_debug_view_and_more_like_this(service: Service, driver: Any) -> None:
    open_page(driver, service, f"/?q={WORD}")
    api = search(service, text=WORD, facets="true", k=PAGE)
    first = driver.find_element("css selector", "#results .hit")
    hit = api["results"][0]
    assert hit["id"] not in first.text and "score" not in first.text and f"{hit['score']:.3f}" not in first.text
    assert (
        not driver.find_element("id", "mode").is_displayed() and "mode" not in driver.find_element("id", "status").text
    )
    click(driver, driver.find_element("id", "debug"))
    debug = [e.text for e in driver.find_elements("css selector", "#results .hit .debug")]
    assert debug == [f"#{h['rank']} · id {h['id']} · score {h['score']:.3f}" for h in api["results"]]
    assert f"mode {api['query']['mode']}" in driver.find_element("id", "status").text
    assert driver.find_element("id", "mode").is_displayed()
    click(driver, driver.find_element("id", "debug"))
    assert not driver.find_element("css selector", "#results .hit .debug").is_displayed()

    chosen = cards(driver)[0]
    click(driver, first.find_element("tag name", "button"))  # "More like this"
    assert settled(driver) == f"{N_PRODUCTS - 1} products like “{hit['title']}”"
    like = search(service, like=chosen, facets="true", k=PAGE, offset=0)
    assert cards(driver) == ids(like) and chosen not in cards(driver)
