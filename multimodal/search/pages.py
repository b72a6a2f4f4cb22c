"""Pages of search results, for people paging through them: a query's results are its top ``depth`` products (the
whole filtered catalogue when there is no query: browsing), a page is ``k`` of them from ``offset``, and with
facets the count of each facet value over all of them (:mod:`multimodal.search.facets`), not over one page.

Every page of a query is cut from the same ``depth`` results, so page 2 starts where page 1 ended and the counts do
not change while a shopper pages. Chosen facet values and a typed filter are one filter expression, applied inside
FAISS and BM25 as ``--where`` is. When a filtered search finds nothing, the answer says which filter to drop.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from multimodal.errors import UserError
from multimodal.search.facets import Facets, Selection, drops, joined, selection_where
from multimodal.search.filters import Filter
from multimodal.search.hits import HIDDEN
from multimodal.search.index import LABEL, SearchIndex
from multimodal.search.query import Query, check_query, search_many

if TYPE_CHECKING:
    from multimodal.search.query_encoder import QueryEncoder

DEPTH = 240  # results of a query a shopper can page through (ten pages of 24)


@dataclass
class PageRequest:
    """A search asked for by page: ``query`` (with neither text, photo nor ``like``: the catalogue is browsed; its
    ``k`` is the page size), the page's ``offset``, whether to count ``facets``, and the facet values chosen."""

    query: Query
    offset: int = 0
    facets: bool = False
    selection: Selection = field(default_factory=dict)

    @property
    def browsing(self) -> bool:
        q = self.query
        return q.text is None and q.image is None and q.like is None


@dataclass
class Page:
    """One page: its results (``score`` plus the products table's columns; no score when browsing), how many
    results the query has (``total``), facet counts over them and, when there are none, filters to drop."""

    results: list[dict[str, Any]]
    total: int
    where: str | None
    facets: list[dict[str, Any]] | None = None
    suggestions: list[dict[str, Any]] | None = None


def prepared(index: SearchIndex, request: PageRequest, can_rerank: bool, depth: int = DEPTH) -> Query | None:
    """The query a page request runs: its filter joined with the chosen facet values, ``k`` the whole ``depth``
    of results (at least the page size); checked as :func:`~multimodal.search.query.check_query` checks (and its
    unset options settled). None when browsing.

    Raises:
        UserError: a query that cannot be answered, or re-ranking asked with an offset or facets.
    """
    q = request.query
    where = joined(q.where, selection_where(request.selection, index.products))
    if request.browsing:
        if q.rerank or q.mode or q.fusion or q.weight is not None:
            raise UserError("browsing the catalogue (no text, photo or 'like') takes no rerank, mode, fusion or weight")
        if not 1 <= q.k <= index.count:
            raise UserError(f"k={q.k} is outside 1..{index.count} (the index holds {index.count} products)")
        if where is not None:
            Filter(where, index.products, HIDDEN, index.filter_cache)  # parses and checks the columns
        return None
    if q.rerank:
        raise UserError("rerank re-orders one list of k results: ask for it without offset, facets or browse")
    checked = check_query(index, replace(q, where=where), can_rerank)
    return replace(checked, k=min(index.count, max(depth, q.k)))


def pages(
    index: SearchIndex,
    encoder: QueryEncoder | None,
    requests: list[PageRequest],
    runs: list[Query | None],
    facets: Facets,
) -> list[Page]:
    """The pages of ``requests`` (their ``runs`` from :func:`prepared`): every query searched together (one forward
    pass per kind, one FAISS search per filter), each page cut from its query's results."""
    wheres = [joined(r.query.where, selection_where(r.selection, index.products)) for r in requests]
    out, empty = [], []
    for request, run, where, (rows, records) in zip(
        requests, runs, wheres, _searched(index, encoder, runs, wheres), strict=True
    ):
        start, stop = request.offset, request.offset + request.query.k
        if records is None:  # browsing: only the page's rows are read
            records = index.products.iloc[rows[start:stop]].drop(columns=[LABEL]).to_dict("records")
            start, stop = 0, len(records)
        page = Page(records[start:stop], len(rows), where)
        if request.facets:
            page.facets = facets.counts(rows, request.selection)
            if not len(rows) and where is not None:
                empty.append((page, request, run))
        out.append(page)
    _suggest(index, encoder, empty)
    return out


def _searched(
    index: SearchIndex, encoder: QueryEncoder | None, runs: list[Query | None], wheres: list[str | None]
) -> list[tuple[np.ndarray, list[dict[str, Any]] | None]]:
    """The products-table rows of each run's results, and the results (None when browsing: the catalogue rows
    ``wheres`` keeps, in their order)."""
    found = iter(search_many(index, encoder, [q for q in runs if q is not None]))
    out: list[tuple[np.ndarray, list[dict[str, Any]] | None]] = []
    for run, where in zip(runs, wheres, strict=True):
        if run is None:
            keep = Filter(where, index.products, HIDDEN, index.filter_cache).mask() if where is not None else None
            out.append((np.arange(index.count) if keep is None else np.flatnonzero(keep), None))
        else:
            records = next(found)
            out.append((np.array([index.rows_by_id[str(r["id"])] for r in records], dtype=np.int64), records))
    return out


def _suggest(index: SearchIndex, encoder: QueryEncoder | None, empty: list[tuple[Page, PageRequest, Any]]) -> None:
    """For each page whose search found nothing: the filters it may drop, each with the number of results its
    query has without it (those that give some, most first); every relaxed query searched together."""
    tried = []
    for page, request, run in empty:
        page.suggestions = []
        for drop, rest in drops(request.query.where, request.selection, index.products):
            tried.append((page, drop, None if run is None else replace(run, where=rest), rest))
    if not tried:
        return
    counted = _searched(index, encoder, [t[2] for t in tried], [t[3] for t in tried])
    for (page, drop, _, _), (rows, _) in zip(tried, counted, strict=True):
        if len(rows):
            page.suggestions.append({"drop": drop, "count": int(len(rows))})  # type: ignore[union-attr]
    for page, _, _ in empty:
        page.suggestions.sort(key=lambda s: -s["count"])  # type: ignore[union-attr]
