"""The search page as a shopper meets it, driven in headless Chromium: a photo grid with the catalogue's own fields,
facets counted by the service over a query's results, pages, "more like this", a photo dropped or picked, a way out
of an empty result, and ids, scores and modes only in the debug view.

A real ``multimodal serve --index`` (subprocess, loopback port) over 120 sample products exported by the tiny
retriever, with BM25 over the titles (:mod:`search_page_fixtures`); what the page shows is compared with that same
``/search`` (its answers over HTTP are checked in ``test_search_pages_api.py``). With
``SEARCH_PAGE_SCREENSHOTS=docs/images`` the tests write the page's screenshots there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import SAMPLE_IMAGES
from search_page_fixtures import N_PRODUCTS, PAGE, WORD, counts, ids, search, women_total
from search_page_fixtures import index as index  # fixtures, by name
from search_page_fixtures import products as products
from search_page_fixtures import service as service
from test_serve import Service, browser

SHOTS = os.environ.get("SEARCH_PAGE_SCREENSHOTS")  # a folder for the page's screenshots (docs/images)

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
