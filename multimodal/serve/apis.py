"""One LitServe ``LitAPI`` per task, each calling that task's Python inference API.

LitServe's dynamic batching hands ``predict`` every request that arrived within ``batch_timeout`` (up to
``max_batch_size``); ``predict`` answers them with one call of the task API (in forward passes of
``--forward_batch_size``). ``decode_request`` runs per request in the inference worker: a mistake becomes a
:class:`~multimodal.serve.requests.Problem` that travels through the batch untouched and is answered as a 4xx JSON
error for that request alone.
"""

import math
from typing import Any, ClassVar
from urllib.parse import quote

import litserve as ls

from multimodal.errors import UserError
from multimodal.serve import DEFAULT_RELOAD_INTERVAL
from multimodal.serve.requests import Payload, Problem, fields, flag, image, integer, number, text

Item = Any  # what decode_request returns: a task's input dict, or a Problem


def plain(value: Any) -> Any:
    """A JSON-safe copy of a products-table or row value (NumPy scalars and arrays, NaN -> None)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


class TaskAPI(ls.LitAPI):
    """What the three APIs share: per-request problems, batched or single ``predict``, JSON errors.

    Args:
        checkpoint: the task's checkpoint (or, for search, the index folder).
        max_pixels: largest uploaded image, in pixels.
        max_batch_size / batch_timeout: LitServe's dynamic batching.
        threads: torch threads of the worker (None: torch's default).
        forward_batch_size: items per forward pass of the task API (None: ``cpu_forward_batch`` on a CPU, else the
            whole dynamic batch).
    """

    path: ClassVar[str] = "/predict"
    # Items per forward pass on a CPU when --forward_batch_size is not given (None: the whole dynamic batch).
    cpu_forward_batch: ClassVar[int | None] = None

    def __init__(
        self,
        checkpoint: str,
        max_pixels: int,
        max_batch_size: int = 1,
        batch_timeout: float = 0.0,
        threads: int | None = None,
        forward_batch_size: int | None = None,
        runtime: str = "torch",
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=self.path)
        self.runtime = runtime
        self.checkpoint = checkpoint
        self.max_pixels = max_pixels
        self.threads = threads
        self.forward_batch_size = forward_batch_size

    def setup(self, device: str) -> None:
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        if self.forward_batch_size is None:
            on_cpu = not str(device).startswith(("cuda", "mps"))
            cap = self.cpu_forward_batch if on_cpu and self.cpu_forward_batch else self.max_batch_size
            self.forward_batch_size = min(self.max_batch_size, cap)
        self.load(device)

    def load(self, device: str) -> None:
        """Load the task's model on ``device`` (once per inference worker)."""
        raise NotImplementedError

    # No ``from __future__ import annotations`` in this module: LitServe hands this annotation to FastAPI as the
    # endpoint's parameter type, so it must be the object itself (FastAPI then runs read_payload per request).
    def decode_request(self, request: Payload) -> Item:
        try:
            return self.decode(request)
        except Problem as problem:
            return problem
        except UserError as err:
            return Problem(str(err))

    def decode(self, payload: dict[str, Any]) -> Any:
        raise NotImplementedError

    def answer(self, items: list[Any]) -> list[Any]:
        """One output per decoded request (a dict, or a Problem)."""
        raise NotImplementedError

    def predict(self, x: Any) -> Any:
        items = list(x) if self.max_batch_size > 1 else [x]
        todo = [i for i, item in enumerate(items) if not isinstance(item, Problem)]
        outputs = list(items)
        if todo:
            try:
                answers = self.answer([items[i] for i in todo])
            except UserError as err:
                answers = [Problem(str(err))] * len(todo)
            for i, out in zip(todo, answers, strict=True):
                outputs[i] = out
        return outputs if self.max_batch_size > 1 else outputs[0]

    def encode_response(self, output: Any) -> Any:
        return output.response() if isinstance(output, Problem) else output


class TagAPI(TaskAPI):
    """``POST /tag``: a photo (``image``) and/or the texts the tagger reads (e.g. ``title``) -> the batch output's
    fields: per attribute its label, ``<attribute>_score`` and, for ``top_k`` > 1, ``<attribute>_top``; per tag
    column the tags and ``<column>_scores``."""

    path = "/tag"
    # The tagger's photo tower is fastest per item at 8 photos a pass on a CPU (2-core box: 17.7 ms at 8, 20.8 ms at
    # 32, 27.6 ms at 64: larger batches' activations leave the caches); a dynamic batch of 32 runs as 4 passes.
    cpu_forward_batch = 8

    def load(self, device: str) -> None:
        from multimodal.tagging.predictor import Tagger

        self.tagger = Tagger.load(
            self.checkpoint, device=device, batch_size=self.forward_batch_size, runtime=self.runtime
        )

    def decode(self, payload: dict[str, Any]) -> dict[str, Any]:
        columns = self.tagger.columns
        fields(payload, {"image", "id", "top_k", *columns.texts})
        record: dict[str, Any] = {c: text(payload, c) for c in columns.texts}
        photo = image(payload, "image", self.max_pixels)
        if photo is None and not any(v and v.strip() for v in record.values()):
            raise Problem(f"send a photo (field 'image') or a text (field(s) {list(columns.texts)})")
        record[columns.image] = photo
        largest = max((len(v) for v in self.tagger.classes.values()), default=1)
        return {"record": record, "id": text(payload, "id"), "top_k": integer(payload, "top_k", 1, 1, largest)}

    def answer(self, items: list[dict[str, Any]]) -> list[Any]:
        columns = self.tagger.columns
        records = [{**item["record"], columns.id: str(i)} for i, item in enumerate(items)]  # ids unique per batch
        self.tagger.top_k = max(item["top_k"] for item in items)
        out: list[Any] = []
        for item, row in zip(items, self.tagger.run(records), strict=True):
            if "error" in row:
                out.append(Problem(str(row["error"])))
                continue
            row = {k: plain(v) for k, v in row.items() if k != "id"}
            for attribute in self.tagger.classes:  # the batch ran at its largest top_k: cut to this request's
                if item["top_k"] > 1:
                    row[f"{attribute}_top"] = row[f"{attribute}_top"][: item["top_k"]]
                else:
                    row.pop(f"{attribute}_top", None)
            out.append({"id": item["id"], **row} if item["id"] is not None else row)
        return out


# generate options a caption request may set, with their types and bounds (a service protects its workers)
CAPTION_OPTIONS: dict[str, tuple[str, int, int]] = {
    "num_beams": ("int", 1, 16),
    "max_new_tokens": ("int", 1, 256),
    "min_new_tokens": ("int", 0, 256),
    "no_repeat_ngram_size": ("int", 0, 16),
    "do_sample": ("bool", 0, 0),
    "temperature": ("float", 0, 0),
    "top_p": ("float", 0, 0),
    "repetition_penalty": ("float", 0, 0),
    "length_penalty": ("float", 0, 0),
    "rerank": ("bool", 0, 0),
}


class CaptionAPI(TaskAPI):
    """``POST /caption``: a photo (``image``), optional ``prompt``, ``seed`` and generate options -> ``caption``
    and ``score``. Requests of one dynamic batch with the same options are generated together."""

    path = "/caption"

    def load(self, device: str) -> None:
        from multimodal.captioning.predictor import Captioner

        self.captioner = Captioner.load(self.checkpoint, device=device, batch_size=self.forward_batch_size)

    def decode(self, payload: dict[str, Any]) -> dict[str, Any]:
        from multimodal.captioning.predictor import check_generation

        model = self.captioner.model
        fields(payload, {"image", "id", "prompt", "seed", *CAPTION_OPTIONS, *model.prompt_columns})
        photo = image(payload, "image", self.max_pixels)
        if photo is None:
            raise Problem("send a photo to caption (multipart field 'image')")
        options: dict[str, Any] = {}
        for key, (kind, low, high) in CAPTION_OPTIONS.items():
            if key not in payload:
                continue
            if kind == "int":
                options[key] = integer(payload, key, 0, low, high)
            elif kind == "bool":
                options[key] = flag(payload, key)
            else:
                options[key] = number(payload, key)
        if options.get("rerank") and model.memory is None:
            raise Problem("rerank: this captioner holds no caption memory (fit with model.rerank or model.retrieval)")
        record = {self.captioner.columns.image: photo, **{c: text(payload, c) for c in model.prompt_columns}}
        prompt = text(payload, "prompt")
        seed = integer(payload, "seed", 0, 0)
        return {"record": record, "id": text(payload, "id"), "prompt": prompt, "seed": seed,
                "options": check_generation(options)}  # fmt: skip

    def answer(self, items: list[dict[str, Any]]) -> list[Any]:
        groups: dict[tuple, list[int]] = {}
        for i, item in enumerate(items):
            key = (item["prompt"], item["seed"], tuple(sorted(item["options"].items())))
            groups.setdefault(key, []).append(i)
        out: list[Any] = [None] * len(items)
        column = self.captioner.columns.id
        for (prompt, seed, options), members in groups.items():
            records = [{**items[i]["record"], column: str(n)} for n, i in enumerate(members)]
            self.captioner.configure(prompt, seed, **dict(options))
            for i, row in zip(members, self.captioner.run(records), strict=True):
                if "error" in row:
                    out[i] = Problem(str(row["error"]))
                    continue
                answer = {"caption": row["caption"], "score": plain(row["score"])}
                out[i] = {"id": items[i]["id"], **answer} if items[i]["id"] is not None else answer
        return out


class SearchAPI(TaskAPI):
    """``POST /search`` (and ``GET /search``): ``text``, a photo (``image``) or ``like`` (a product id), ``k``,
    ``rerank``, ``mode`` (dense / lexical / hybrid, with ``fusion`` and ``weight``) and ``where`` (a metadata
    filter) -> ``index_version`` (the build that answered), ``query`` and ``results``: rank, id, score (and
    ``rerank_score``), the export's metadata columns, and ``image_url`` (the photo, served by ``/images/``).

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
            mode=text(payload, "mode") or "dense",
            where=text(payload, "where"),
            fusion=text(payload, "fusion") or "rrf",
            weight=0.5 if number(payload, "weight") is None else float(number(payload, "weight")),  # type: ignore[arg-type]
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
                check_query(loaded.index, query, loaded.encoder.can_rerank)
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
