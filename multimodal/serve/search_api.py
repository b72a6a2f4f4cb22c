"""``POST /search`` and ``GET /search``: the search index over HTTP, following its newest build."""

# No ``from __future__ import annotations``, as in :mod:`multimodal.serve.task_api` (LitServe reads annotations).
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

from multimodal.errors import UserError
from multimodal.serve import DEFAULT_RELOAD_INTERVAL
from multimodal.serve.requests import Problem, fields, flag, image, integer, json_object, number, text
from multimodal.serve.task_api import TaskAPI, plain

FIELDS = {"text", "image", "like", "k", "rerank", "mode", "where", "fusion", "weight", "offset", "facets", "filters",
          "browse"}  # fmt: skip
PAGE_FIELDS = {  # the fields that ask for a page (multimodal.search.pages), as the OpenAPI schema describes them
    "offset": {"type": "integer", "minimum": 0, "description": "the page starts after this many results (it holds k)"},
    "facets": {"type": "boolean", "description": "true: count each facet value over all the query's results"},
    "filters": {"type": "string", "description": 'a JSON object of column -> value or list of values, e.g. '
                '{"column": ["a", "b"]}; joined to where by AND'},
    "browse": {"type": "boolean", "description": "true: no text, photo or like; the catalogue in its own order"},
}  # fmt: skip


@dataclass
class Asked:
    """A decoded request: the query, and how its results are paged (``paged``: it gave ``offset``, ``facets`` or
    ``browse``; otherwise the answer is the plain top ``k``, as before pages existed)."""

    query: Any  # multimodal.search.query.Query (neither text, photo nor like: browsing)
    paged: bool
    offset: int
    facets: bool
    filters: dict[str, Any] | None


class SearchAPI(TaskAPI):
    """``POST /search`` (and ``GET /search``): ``text``, a photo (``image``) or ``like`` (a product id), ``k``,
    ``rerank``, ``mode`` (dense / lexical / hybrid, with ``fusion`` and ``weight``; unset: the index's default,
    as ``multimodal search``'s) and ``where`` (a metadata filter) -> ``index_version`` (the build that answered),
    ``query`` and ``results``: rank, id, score (and ``rerank_score``), the export's metadata columns, and
    ``image_url`` (the photo, served by ``/images/``).

    Pages (:mod:`multimodal.search.pages`): ``offset`` (a page of ``k`` from there), ``facets`` (true: counts of
    each facet value over all the query's results), ``filters`` (a JSON object of column -> chosen values) and
    ``browse`` (true: no query, the catalogue in its own order). A paged answer adds ``total``, ``offset``,
    ``display`` (the columns a result card shows), ``facets`` and, when nothing matched, ``suggestions`` (filters
    to drop).

    The index is followed (:class:`~multimodal.serve.live.LiveIndex`): a dynamic batch is answered from the build
    that is current when it starts, all its queries by one FAISS search. Decoding reads no index, so every check
    against the catalogue (``k`` and ``rerank`` within its size, a ``like`` id in it) is made by that one build.

    Args:
        reload_interval: seconds between two looks for a new build of the index (0: never).
        facets / title / display: the facet columns, the column that titles a result and the fields a result shows
            (None: found in each build's products table, :mod:`multimodal.search.facets`).
        depth: results of a query that pages and facets cover.
    """

    path = "/search"

    def __init__(
        self,
        checkpoint: str,
        max_pixels: int,
        reload_interval: float = DEFAULT_RELOAD_INTERVAL,
        facets: list[str] | None = None,
        title: str | None = None,
        display: list[str] | None = None,
        depth: int | None = None,
        **batching: Any,
    ) -> None:
        from multimodal.search.pages import DEPTH

        super().__init__(checkpoint, max_pixels, **batching)
        self.reload_interval = reload_interval
        self.settings = {"facets": facets, "title": title, "display": display}
        self.depth = DEPTH if depth is None else depth
        self._facets: tuple[str, Any] | None = None  # (build version, its Facets)

    def load(self, device: str) -> None:
        from multimodal.serve.live import LiveIndex

        self.live = LiveIndex(self.checkpoint, device, self.runtime, self.reload_interval)
        self.facets_of(self.live.current)  # settings naming columns the index lacks fail at start

    def facets_of(self, loaded: Any) -> Any:
        """The :class:`~multimodal.search.facets.Facets` of a loaded build (made once per build)."""
        from multimodal.search.facets import Facets

        if self._facets is None or self._facets[0] != loaded.version:
            index = loaded.index
            self._facets = (loaded.version, Facets.of(index.products, index.info.get("lexical"), **self.settings))
        return self._facets[1]

    def decode(self, payload: dict[str, Any]) -> Any:
        from multimodal.search.query import Query

        fields(payload, FIELDS)
        query = Query(
            text=text(payload, "text"),
            image=image(payload, "image", self.max_pixels),
            like=text(payload, "like"),
            k=integer(payload, "k", 10, 1),
            rerank=integer(payload, "rerank", 0, 0),
            mode=text(payload, "mode") or None,  # None: the index's default (multimodal.search.query.settled)
            where=text(payload, "where"),
            fusion=text(payload, "fusion") or None,
            weight=None if number(payload, "weight") is None else float(number(payload, "weight")),  # type: ignore[arg-type]
        )
        browse, facets = bool(flag(payload, "browse")), bool(flag(payload, "facets"))
        given = [name for name in ("text", "image", "like") if getattr(query, name) is not None]
        if browse and given:
            raise Problem(f"browse=true lists the catalogue: send no {', '.join(given)}")
        if not browse and len(given) != 1:
            raise Problem(f"a query needs exactly one of text, image or like, not {given or 'none'} "
                          "(or browse=true for the catalogue)")  # fmt: skip
        offset = integer(payload, "offset", 0, 0)
        paged = browse or facets or "offset" in payload
        return Asked(query, paged, offset, facets, json_object(payload, "filters"))

    def answer(self, items: list[Any]) -> list[Any]:
        from multimodal.search.facets import joined, selection_of, selection_where
        from multimodal.search.pages import PageRequest, pages, prepared
        from multimodal.search.query import check_query, search_many

        loaded = self.live.current  # one build for the whole batch, whatever the follower swaps meanwhile
        index, can_rerank = loaded.index, loaded.encoder.can_rerank
        version = {"index_version": loaded.version}
        out: list[Any] = [None] * len(items)
        plain_todo: dict[int, Any] = {}  # item -> its settled query
        paged_todo: dict[int, tuple[Any, Any]] = {}  # item -> (its PageRequest, the query it runs)
        for i, asked in enumerate(items):
            query = asked.query
            try:
                if query.like is not None and query.like not in index.rows_by_id:
                    raise Problem(f"product id '{query.like}' is not in the index", 404, version)
                selection = selection_of(asked.filters, index.products)
                if asked.paged:
                    request = PageRequest(query, asked.offset, asked.facets, selection)
                    paged_todo[i] = (request, prepared(index, request, can_rerank, self.depth))
                else:  # the index's defaults set, the chosen values joined to the filter
                    where = joined(query.where, selection_where(selection, index.products))
                    plain_todo[i] = check_query(index, replace(query, where=where), can_rerank)
            except Problem as problem:
                out[i] = problem
            except UserError as err:
                out[i] = Problem(str(err), 400, version)
        found = search_many(index, loaded.encoder, list(plain_todo.values())) if plain_todo else []
        for (i, query), results in zip(plain_todo.items(), found, strict=True):
            out[i] = {**version, "query": shown(query, items[i]), "results": [hit(rank, res) for rank, res in
                                                                             enumerate(results, 1)]}  # fmt: skip
        if paged_todo:
            facets = self.facets_of(loaded)
            requests, runs = zip(*paged_todo.values(), strict=True)
            answered = pages(index, loaded.encoder, list(requests), list(runs), facets)
            for (i, (request, run)), page in zip(paged_todo.items(), answered, strict=True):
                out[i] = {**version, "query": shown(run or request.query, items[i]), **paged(page, request, facets)}
        return out


def paged(page: Any, request: Any, facets: Any) -> dict[str, Any]:
    """A page's part of the answer: its results ranked from ``offset + 1``, the total, the display columns, facet
    counts and the filters to drop."""
    out = {
        "results": [hit(request.offset + rank, res) for rank, res in enumerate(page.results, 1)],
        "total": page.total,
        "offset": request.offset,
        "display": {"title": facets.title, "fields": facets.display},
    }
    if page.facets is not None:
        out["facets"] = page.facets
    if page.suggestions is not None:
        out["suggestions"] = page.suggestions
    return out


def shown(query: Any, asked: Asked) -> dict[str, Any]:
    """The query as the answer repeats it (no photo bytes, no unset options)."""
    given = {"text": query.text, "like": query.like, "image": query.image is not None or None}
    given.update(mode=query.mode, where=asked.query.where, filters=asked.filters or None)
    if asked.paged:
        given["offset"] = asked.offset
        if not any(getattr(asked.query, name) is not None for name in ("text", "image", "like")):
            given["browse"] = True
    k = asked.query.k  # the page size asked for (a page runs its query over all its results)
    return {**{key: v for key, v in given.items() if v is not None}, "k": k, "rerank": query.rerank}


def hit(rank: int, res: dict[str, Any]) -> dict[str, Any]:
    """One result as JSON: rank, id, score (none when browsing; and rerank score), metadata, and the photo's URL."""
    out: dict[str, Any] = {"rank": rank, "id": str(res["id"])}
    if res.get("score") is not None:
        out["score"] = round(float(res["score"]), 6)
    if "rerank_score" in res:
        out["rerank_score"] = round(float(res["rerank_score"]), 6)
    out.update({c: plain(v) for c, v in res.items() if c not in ("id", "score", "rerank_score")})
    if res.get("image_path") is not None:
        out["image_url"] = "/images/" + quote(str(res["image_path"]))
    return out
