"""``POST /search`` and ``GET /search``: the search index over HTTP, following its newest build."""

# No ``from __future__ import annotations``, as in :mod:`multimodal.serve.task_api` (LitServe reads annotations).
from typing import Any
from urllib.parse import quote

from multimodal.errors import UserError
from multimodal.serve import DEFAULT_RELOAD_INTERVAL
from multimodal.serve.requests import Problem, fields, image, integer, number, text
from multimodal.serve.task_api import TaskAPI, plain


class SearchAPI(TaskAPI):
    """``POST /search`` (and ``GET /search``): ``text``, a photo (``image``) or ``like`` (a product id), ``k``,
    ``rerank``, ``mode`` (dense / lexical / hybrid, with ``fusion`` and ``weight``; unset: the index's default,
    as ``multimodal search``'s) and ``where`` (a metadata filter) -> ``index_version`` (the build that answered),
    ``query`` and ``results``: rank, id, score (and ``rerank_score``), the export's metadata columns, and
    ``image_url`` (the photo, served by ``/images/``).

    The index is followed (:class:`~multimodal.serve.live.LiveIndex`): a dynamic batch is answered from the build
    that is current when it starts, all its queries by one FAISS search. Decoding reads no index, so every check
    against the catalogue (``k`` and ``rerank`` within its size, a ``like`` id in it) is made by that one build.

    Args:
        reload_interval: seconds between two looks for a new build of the index (0: never).
    """

    path = "/search"

    def __init__(
        self, checkpoint: str, max_pixels: int, reload_interval: float = DEFAULT_RELOAD_INTERVAL, **batching: Any
    ) -> None:
        super().__init__(checkpoint, max_pixels, **batching)
        self.reload_interval = reload_interval

    def load(self, device: str) -> None:
        from multimodal.serve.live import LiveIndex

        self.live = LiveIndex(self.checkpoint, device, self.runtime, self.reload_interval)

    def decode(self, payload: dict[str, Any]) -> Any:
        from multimodal.search.query import Query

        fields(payload, {"text", "image", "like", "k", "rerank", "mode", "where", "fusion", "weight"})
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
        _ = query.kind  # exactly one of text, image or like: a UserError (a 400) otherwise
        return query

    def answer(self, items: list[Any]) -> list[Any]:
        from multimodal.search.query import check_query, search_many

        loaded = self.live.current  # one build for the whole batch, whatever the follower swaps meanwhile
        version = {"index_version": loaded.version}
        out: list[Any] = [None] * len(items)
        todo: list[int] = []
        for i, query in enumerate(items):
            try:
                if query.like is not None and query.like not in loaded.index.rows_by_id:
                    raise Problem(f"product id '{query.like}' is not in the index", 404, version)
                items[i] = check_query(loaded.index, query, loaded.encoder.can_rerank)  # the index's defaults set
                todo.append(i)
            except Problem as problem:
                out[i] = problem
            except UserError as err:
                out[i] = Problem(str(err), 400, version)
        found = search_many(loaded.index, loaded.encoder, [items[i] for i in todo]) if todo else []
        for i, results in zip(todo, found, strict=True):
            out[i] = {**version, "query": shown(items[i]), "results": [hit(rank, res) for rank, res in
                                                                     enumerate(results, 1)]}  # fmt: skip
        return out


def shown(query: Any) -> dict[str, Any]:
    """The query as the answer repeats it (no photo bytes, no unset options)."""
    given = {"text": query.text, "like": query.like, "image": query.image is not None or None}
    given.update(mode=query.mode, where=query.where)
    return {**{k: v for k, v in given.items() if v is not None}, "k": query.k, "rerank": query.rerank}


def hit(rank: int, res: dict[str, Any]) -> dict[str, Any]:
    """One result as JSON: rank, id, score (and rerank score), metadata, and the photo's URL."""
    out = {"rank": rank, "id": str(res["id"]), "score": round(float(res["score"]), 6)}
    if "rerank_score" in res:
        out["rerank_score"] = round(float(res["rerank_score"]), 6)
    out.update({c: plain(v) for c, v in res.items() if c not in ("id", "score", "rerank_score")})
    if res.get("image_path") is not None:
        out["image_url"] = "/images/" + quote(str(res["image_path"]))
    return out
