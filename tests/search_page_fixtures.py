"""What the search page's tests share (``test_search_pages_api.py``, over HTTP, and ``test_search_page.py``, in
headless Chromium): 120 sample products exported by the tiny retriever, indexed with BM25 over the titles, a real
``multimodal serve --index`` over them, and reading ``/search``'s answers.

The fixtures are module-scoped: each test file starts its own service and stops it when its tests are done.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from test_serve import Service, catalogue_index

N_PRODUCTS, PAGE, WORD = 120, 24, "black"  # WORD: a title word of more than PAGE products


@pytest.fixture(scope="module")
def products(sample_df: pd.DataFrame) -> pd.DataFrame:
    return sample_df.iloc[::7].head(N_PRODUCTS).reset_index(drop=True)


@pytest.fixture(scope="module")
def index(trained: dict[str, Path], products: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return catalogue_index(trained["retriever"], products, tmp_path_factory.mktemp("search-page"), "--lexical", "title")


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
