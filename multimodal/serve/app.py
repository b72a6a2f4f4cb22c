"""The ``LitServer`` of ``multimodal serve``: the task APIs that were given, plus the routes LitServe does not
make itself: the search page at ``/`` (and its ``/page.js``, ``/page.css``), the catalogue photos under
``/images/`` (read-only, confined to the image root of the index's current build), ``GET /search`` beside
LitServe's ``POST /search``, ``/info`` with the current build of the index, and a 404 JSON answer for each task
not loaded.
"""

# No ``from __future__ import annotations``: FastAPI reads the route functions' annotations as objects.
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from multimodal.errors import UserError
from multimodal.serve import DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD, DEFAULT_RELOAD_INTERVAL, FORM_SLACK
from multimodal.serve.live import read_build
from multimodal.task import Task, resolve, tasks

PAGE_FOLDER = Path(__file__).with_name("page")
PAGE = PAGE_FOLDER / "index.html"
PAGE_FILES = {"page.js": "text/javascript; charset=utf-8", "page.css": "text/css; charset=utf-8"}  # beside PAGE
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}


@dataclass
class Settings:
    """What ``multimodal serve`` was asked for (each model is optional; a registered task's, by its serve option,
    in ``others``)."""

    tagger: str | None = None
    captioner: str | None = None
    index: str | None = None
    max_batch_size: int = 32
    batch_timeout: float = 0.01
    workers: int = 1
    accelerator: str = "auto"
    devices: Any = "auto"
    timeout: float = 60.0
    threads: int | None = None
    runtime: str = "torch"  # the tagger's and the search towers' (the captioner runs on torch)
    forward_batch_size: int | None = None
    fast_queue: bool = False
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD
    max_pixels: int = DEFAULT_MAX_PIXELS
    fetch_hosts: tuple[str, ...] = ()  # hosts whose photo URLs requests may give (field image_url); () = none
    reload_interval: float = DEFAULT_RELOAD_INTERVAL  # seconds between looks for a new build of the index (0: never)
    facets: list[str] | None = None  # the page's columns (None: found in each build of the index, search.facets)
    title_field: str | None = None
    display_fields: list[str] | None = None
    models: dict[str, Any] = field(default_factory=dict)  # filled by check(): what /info tells about each
    others: dict[str, str | None] = field(default_factory=dict)  # registered tasks' models, by serve option

    def model(self, setting: str) -> str | None:
        """The model given for a task's serve option (``tagger``, ``index``, a registered task's), or None."""
        return self.others[setting] if setting in self.others else getattr(self, setting, None)


def served() -> list[Task]:
    """The tasks ``multimodal serve`` offers (those declaring ``serving``), in their declared order."""
    return [t for t in tasks() if t.serving is not None]


def check(settings: Settings) -> None:
    """One-line errors before any worker starts: missing files, a checkpoint of another task, a broken index, a
    page column the index does not store."""
    from multimodal.loading import describe

    if not any(settings.model(t.serving.setting) for t in served()):
        flags = [f"--{t.serving.setting} {'CKPT' if t.serving.reads_checkpoint else 'FOLDER'}" for t in served()]
        raise UserError(f"nothing to serve: give at least one of {', '.join(flags)}")
    if settings.max_batch_size < 1 or settings.workers < 1 or settings.batch_timeout < 0:
        raise UserError("--max_batch_size and --workers must be at least 1, --batch_timeout at least 0")
    if settings.forward_batch_size is not None and settings.forward_batch_size < 1:
        raise UserError("--forward_batch_size must be at least 1")
    if not settings.reload_interval >= 0:  # also refuses NaN
        raise UserError(f"--reload_interval {settings.reload_interval} must be 0 (never) or a positive number of "
                        "seconds")  # fmt: skip
    if settings.index is None and page_columns(settings):
        raise UserError(f"{' and '.join(page_columns(settings))}: the search page's columns need --index")
    for task in served():
        name = task.serving.setting
        path = settings.model(name)
        if path is None or not task.serving.reads_checkpoint:
            continue
        found, columns = describe(path)
        if found != task.class_name:
            raise UserError(f"--{name} {path} holds a {found} checkpoint, not a {task.class_name}")
        settings.models[name] = {"checkpoint": str(path), "texts": list(columns.texts),
                                 "attributes": list(columns.attributes), "tags": list(columns.tags)}  # fmt: skip
    if settings.index is not None:
        info_file = Path(settings.index) / "index.json"
        if not info_file.is_file():
            raise UserError(f"--index {settings.index} is not a search index (no index.json): build one with "
                            "`multimodal index`")  # fmt: skip
        settings.models["index"] = describe_index(settings.index)
        check_page_columns(settings)


def page_columns(settings: Settings) -> dict[str, list[str]]:
    """The columns the page was given, by option (``--facets``, ``--title_field``, ``--display_fields``)."""
    title = None if settings.title_field is None else [settings.title_field]
    given = {"--facets": settings.facets, "--title_field": title, "--display_fields": settings.display_fields}
    return {option: columns for option, columns in given.items() if columns is not None}


def check_page_columns(settings: Settings) -> None:
    """Each column the page was given is one the index's current build stores (read from its products table's
    schema, not the table), so a misspelt column is a one-line error before any worker starts."""
    import pyarrow.parquet as pq

    from multimodal.search.facets import check_columns
    from multimodal.search.index_folder import PRODUCTS_FILE

    if not page_columns(settings):
        return
    table = Path(os.path.realpath(settings.index)) / PRODUCTS_FILE
    try:
        stored = pq.read_schema(table).names
    except (OSError, ValueError) as err:
        raise UserError(f"--index {settings.index}: its products table {table} cannot be read ({err})") from None
    for option, columns in page_columns(settings).items():
        check_columns(stored, columns, option)


def describe_index(folder: str | Path) -> dict[str, Any]:
    """What ``/info`` tells about the index: its current build (version), kind, size, image root and columns."""
    version, info = read_build(folder)
    export = info.get("export") or {}
    return {"folder": str(folder), "index_version": version, "kind": info.get("kind"), "count": info.get("count"),
            "image_root": export.get("image_root"), "columns": export.get("columns")}  # fmt: skip


def build(settings: Settings) -> Any:
    """The configured ``LitServer`` (not started)."""
    import litserve as ls

    batching = {"max_pixels": settings.max_pixels, "max_batch_size": settings.max_batch_size,
                "batch_timeout": settings.batch_timeout, "threads": settings.threads,
                "forward_batch_size": settings.forward_batch_size, "runtime": settings.runtime,
                "fetch_hosts": settings.fetch_hosts}  # fmt: skip
    given = {t.serving.route: (t.serving.api, settings.model(t.serving.setting)) for t in served()}
    own = {"search": {"reload_interval": settings.reload_interval, "facets": settings.facets,
                      "title": settings.title_field, "display": settings.display_fields}}  # fmt: skip
    apis = [
        resolve(api)(str(path), **batching, **own.get(route, {}))
        for route, (api, path) in given.items()
        if path is not None
    ]
    server = ls.LitServer(
        apis,
        accelerator=settings.accelerator,
        devices=settings.devices,
        workers_per_device=settings.workers,
        timeout=settings.timeout,
        fast_queue=settings.fast_queue,
        max_payload_size=settings.max_upload_bytes + FORM_SLACK,  # stops a chunked body with no length as it streams
        model_metadata={
            "models": settings.models,
            "max_upload_bytes": settings.max_upload_bytes,
            "max_pixels": settings.max_pixels,
        },  # fmt: skip
    )
    app = server.app
    app.state.max_upload_bytes = settings.max_upload_bytes
    app.title, app.version = "multimodal serve", _version()
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) != "/"]  # LitServe's "/" text

    _page(app)
    for name, (_, path) in given.items():
        if path is None:
            _absent(app, name)
    if settings.index is not None:
        post = next(r for r in app.router.routes if getattr(r, "path", None) == "/search")
        app.add_api_route("/search", post.endpoint, methods=["GET"], dependencies=post.dependencies,
                          summary="Search by text or 'like' (query string)")  # fmt: skip
        _follow_index(app, settings.index)

    _document(app, settings)
    return server


def _page(app: Any) -> None:
    """The search page: its markup at ``/``, its script and styles beside it (read at each request, as written)."""
    from fastapi.responses import HTMLResponse, Response

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    def serve(name: str, media_type: str) -> None:
        async def asset() -> Response:
            return Response((PAGE_FOLDER / name).read_bytes(), media_type=media_type)

        app.add_api_route(f"/{name}", asset, methods=["GET"], include_in_schema=False)

    for name, media_type in PAGE_FILES.items():
        serve(name, media_type)


def current(folder: str) -> tuple[str, dict[str, Any]]:
    """The version and ``index.json`` of the index's current build; 503 when the index folder is gone."""
    from fastapi import HTTPException

    try:
        return read_build(folder)
    except UserError as err:
        raise HTTPException(503, str(err)) from None


def _follow_index(app: Any, folder: str) -> None:
    """``/images/`` from the image root of the index's current build, and ``/info`` telling that build; each
    reports the version it read (the photo in an ``X-Index-Version`` header)."""
    from fastapi import HTTPException, Request
    from fastapi.responses import FileResponse, JSONResponse

    @app.get("/images/{path:path}", summary="A catalogue photo (from the index's image root)")
    async def photo(path: str) -> FileResponse:
        version, info = current(folder)
        header = {"X-Index-Version": version}
        root = (info.get("export") or {}).get("image_root")
        if not root:
            raise HTTPException(404, "this index names no image root", headers=header)
        base = Path(root).resolve()
        target = (base / path).resolve()
        if not target.is_relative_to(base):
            raise HTTPException(400, f"image path '{path}' escapes the image root", headers=header)
        if target.suffix.lower() not in IMAGE_SUFFIXES or not target.is_file():
            raise HTTPException(404, f"no catalogue photo '{path}'", headers=header)
        return FileResponse(target, headers=header)

    info_route = next(r for r in app.router.routes if getattr(r, "path", None) == "/info")
    litserve_info = info_route.endpoint
    app.router.routes.remove(info_route)

    async def info(request: Request) -> JSONResponse:
        body = json.loads((await litserve_info(request)).body)  # LitServe's answer, its server part kept
        try:
            body["model"]["models"]["index"] = describe_index(folder)
        except UserError as err:
            raise HTTPException(503, str(err)) from None
        return JSONResponse(body)

    app.add_api_route("/info", info, methods=["GET"], dependencies=info_route.dependencies,
                      summary="The loaded models and the index's current build")  # fmt: skip


def _absent(app: Any, name: str) -> None:
    """``/<name>`` answers 404 with a JSON message naming the flag that would load its model."""
    from fastapi import HTTPException

    flag = next(f"--{t.serving.setting}" for t in served() if t.serving.route == name)
    message = f"no model for /{name} is loaded: start `multimodal serve` with {flag}"

    async def absent() -> None:
        raise HTTPException(404, message)

    methods = ["GET", "POST"] if name == "search" else ["POST"]
    app.add_api_route(f"/{name}", absent, methods=methods, summary=f"/{name} (not loaded)", include_in_schema=False)


def _version() -> str:
    from multimodal import __version__

    return __version__


def _document(app: Any, settings: Settings) -> None:
    """OpenAPI descriptions of the task routes (their fields come from the loaded models, not from signatures)."""
    from multimodal.serve.search_api import PAGE_FIELDS

    texts = (settings.models.get("tagger") or {}).get("texts", [])
    photo = {"type": "string", "format": "binary", "description": "the product photo"}
    forms = {
        "/tag": ("Tag a product from its photo and/or texts", {"image": photo, "top_k": {"type": "integer"},
                 "id": {"type": "string"}, **{t: {"type": "string"} for t in texts}}),
        "/caption": ("Caption a product photo", {"image": photo, "prompt": {"type": "string"},
                     "seed": {"type": "integer"}, "num_beams": {"type": "integer"},
                     "max_new_tokens": {"type": "integer"}, "do_sample": {"type": "boolean"},
                     "rerank": {"type": "boolean"}}),
        "/search": ("Search by text, photo or 'like'", {"text": {"type": "string"}, "image": photo,
                    "like": {"type": "string"}, "k": {"type": "integer"}, "rerank": {"type": "integer"},
                    "mode": {"type": "string", "enum": ["dense", "lexical", "hybrid"]}, "where": {"type": "string"},
                    "fusion": {"type": "string", "enum": ["rrf", "weighted"]}, "weight": {"type": "number"},
                    **PAGE_FIELDS}),
    }  # fmt: skip
    for route in app.router.routes:
        path = getattr(route, "path", None)
        if path not in forms or not getattr(route, "include_in_schema", False):
            continue
        summary, properties = forms[path]
        route.summary = route.summary or summary
        if "POST" in route.methods:
            route.openapi_extra = {"requestBody": {"content": {"multipart/form-data": {
                "schema": {"type": "object", "properties": properties}}}}}  # fmt: skip
        else:
            names = ("text", "like", "k", "rerank", "mode", "where", "fusion", "weight", *PAGE_FIELDS)
            route.openapi_extra = {"parameters": [{"name": n, "in": "query", "schema": properties[n]}
                                                  for n in names]}  # fmt: skip
