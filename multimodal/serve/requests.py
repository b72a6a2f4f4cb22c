"""What arrives over HTTP, made safe before it reaches a model.

Two stages. In the HTTP server process, :func:`read_payload` (a FastAPI dependency) reads query parameters, a form
(fields and uploaded files) or a JSON body into a plain dict, refusing an upload over the size limit before the
rest is read: the dict crosses a process boundary to the inference workers, so it holds only strings and bytes.
In an inference worker, each LitAPI's ``decode_request`` turns the dict into model input with :func:`fields`,
:func:`integer` and :func:`image`; a mistake there becomes a :class:`Problem`, answered as a 4xx JSON error for
that request alone (the other requests of its dynamic batch are answered normally).
"""

from __future__ import annotations

import io
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from multimodal.serve import DEFAULT_MAX_UPLOAD, FORM_SLACK


@dataclass
class Problem(Exception):
    """A request that cannot be answered, with its HTTP status, a one-line message and any fields the answer
    carries besides (e.g. the index version that found a product id missing)."""

    message: str
    status: int = 400
    extra: dict[str, Any] = field(default_factory=dict)

    def response(self) -> JSONResponse:
        return JSONResponse({"detail": self.message, **self.extra}, status_code=self.status)


MAX_FILES, MAX_FIELDS = 4, 64  # per form: more is not a request of this service


class CheckedMultiPartParser(MultiPartParser):
    """Starlette's multipart parser that also tells whether the body reached its closing boundary.

    python-multipart's ``MultipartParser.finalize`` does not check that the message is complete (a TODO in its
    code), and Starlette returns the parts completed so far: a body cut off inside the photo's part would read
    as a form without a photo. The closing boundary is the parser's ``on_end`` callback.
    """

    ended = False
    inside: str | None = None  # the part being read: its field name ("" until its headers are read)

    def on_part_begin(self) -> None:
        super().on_part_begin()
        self.inside = ""

    def on_headers_finished(self) -> None:
        super().on_headers_finished()
        self.inside = self._current_part.field_name

    def on_part_end(self) -> None:
        super().on_part_end()
        self.inside = None

    def on_end(self) -> None:
        super().on_end()
        self.ended = True

    def cut_off(self) -> str:
        """The one-line problem of a body that ended before its closing boundary."""
        if self.inside is None:
            where = f"after {len(self.items)} complete part(s)"
        else:
            where = f"inside the part '{self.inside}'" if self.inside else "inside a part's headers"
        return f"upload cut off: the multipart body ends {where}, before its closing boundary; send it again"


async def read_form(request: Request) -> FormData:
    """The request's multipart or URL-encoded form.

    Raises:
        HTTPException: 400 for a malformed form or a multipart body cut off before its closing boundary.
    """
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return await request.form(max_files=MAX_FILES, max_fields=MAX_FIELDS)
    async with aclosing(request.stream()) as stream:
        parser = CheckedMultiPartParser(request.headers, stream, max_files=MAX_FILES, max_fields=MAX_FIELDS)
        try:
            form = await parser.parse()
        except MultiPartException as err:
            raise HTTPException(400, f"the request body is not a readable form ({err.message})") from err
    if not parser.ended:
        await form.close()
        raise HTTPException(400, parser.cut_off())
    return form


async def read_payload(request: Request) -> dict[str, Any]:
    """Query parameters plus the body's fields: a form (files as ``bytes``) or a JSON object.

    Raises:
        HTTPException: 413 for a body over the upload limit, 400 for a body that is not a form or a JSON object.
    """
    limit = getattr(request.app.state, "max_upload_bytes", DEFAULT_MAX_UPLOAD)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + FORM_SLACK:
        raise HTTPException(413, f"request body is {int(declared)} bytes, over the upload limit of {limit} bytes")
    payload: dict[str, Any] = dict(request.query_params)
    kind = request.headers.get("content-type", "")
    if kind.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        try:
            form = await read_form(request)
        except HTTPException:
            raise
        except Exception as err:  # noqa: BLE001 - a malformed form body is the client's mistake
            raise HTTPException(400, f"the request body is not a readable form ({err})") from err
        try:
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    data = await value.read(limit + 1)
                    if len(data) > limit:
                        raise HTTPException(413, f"upload '{key}' is over the limit of {limit} bytes")
                    value = data
                # A repeated field (several photos of one product, several URLs) is a list, in the order sent.
                previous = payload.get(key)
                payload[key] = value if previous is None else [*_listed(previous), value]
        finally:
            await form.close()  # every upload's spooled file, also after a refusal
    elif kind.startswith("application/json"):
        try:
            body = await request.json()
        except ValueError as err:
            raise HTTPException(400, f"the request body is not valid JSON ({err})") from err
        if not isinstance(body, dict):
            raise HTTPException(400, "the JSON body must be an object of fields")
        payload.update(body)
    return payload


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# The type of every LitAPI's decode_request argument: FastAPI runs read_payload for the endpoint.
Payload = Annotated[dict, Depends(read_payload)]


def fields(payload: dict[str, Any], allowed: set[str]) -> dict[str, Any]:
    """The payload, refusing a field this endpoint does not read (a misspelt field would be silently ignored)."""
    unknown = sorted(set(payload) - allowed)
    if unknown:
        raise Problem(f"unknown field(s) {unknown}; this endpoint reads {sorted(allowed)}")
    return payload


def text(payload: dict[str, Any], key: str) -> str | None:
    value = payload.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise Problem(f"field '{key}' must be text")
    return value


def json_object(payload: dict[str, Any], key: str) -> dict[str, Any] | None:
    """A field holding a JSON object: an object of a JSON body as it is, or its text (a query parameter, a form
    field); None when absent."""
    import json

    value = payload.get(key)
    if value is None or isinstance(value, dict):
        return value
    if not isinstance(value, str):
        raise Problem(f"field '{key}' must be a JSON object, not {type(value).__name__}")
    try:
        found = json.loads(value)
    except ValueError as err:
        raise Problem(f"field '{key}' is not valid JSON ({err})") from None
    if not isinstance(found, dict):
        raise Problem(f"field '{key}' must be a JSON object, not {value[:80]!r}")
    return found


def integer(payload: dict[str, Any], key: str, default: int, low: int, high: int | None = None) -> int:
    """An integer field within ``low..high`` (a one-line problem otherwise)."""
    value = payload.get(key, default)
    try:
        number = int(value)
        if isinstance(value, float | bool) or str(value).strip() != str(number):
            raise ValueError
    except (TypeError, ValueError):
        raise Problem(f"field '{key}' must be an integer, not '{value}'") from None
    if number < low or (high is not None and number > high):
        bound = f"{low}..{high}" if high is not None else f"at least {low}"
        raise Problem(f"field '{key}'={number} is outside {bound}")
    return number


def number(payload: dict[str, Any], key: str) -> float | None:
    value = payload.get(key)
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        raise Problem(f"field '{key}' must be a number, not '{value}'") from None


def flag(payload: dict[str, Any], key: str) -> bool | None:
    value = payload.get(key)
    if value is None or isinstance(value, bool):
        return value
    if str(value).lower() in ("1", "true", "yes", "on"):
        return True
    if str(value).lower() in ("0", "false", "no", "off"):
        return False
    raise Problem(f"field '{key}' must be true or false, not '{value}'")


def image(payload: dict[str, Any], key: str, max_pixels: int) -> Any:
    """The uploaded photo as an RGB PIL image, or None when absent.

    Refuses text where a file belongs, bytes that are not an image, a truncated image and one over ``max_pixels``
    (checked from the header, before the pixels are decoded).
    """
    data = payload.get(key)
    if data is None:
        return None
    if isinstance(data, list):
        raise Problem(f"send one photo in field '{key}', not {len(data)}")
    return _decoded(data, f"'{key}'", max_pixels)


def images(payload: dict[str, Any], key: str, max_pixels: int) -> list[Any]:
    """The uploaded photos of one product (the field repeated: ``-F image=@front.jpg -F image=@back.jpg``), in the
    order sent, as :func:`image` decodes one; [] when absent."""
    data = payload.get(key)
    parts = [] if data is None else _listed(data)
    names = [f"'{key}'"] if len(parts) == 1 else [f"'{key}' #{i + 1}" for i in range(len(parts))]
    return [_decoded(part, name, max_pixels) for part, name in zip(parts, names, strict=True)]


def fetched_photos(fetcher: Any, urls: Any, max_pixels: int) -> list[Any]:
    """The photos at ``urls`` (field ``image_url``: one URL or a list), fetched by ``fetcher``; a URL that fails
    or is not allowed is a 422 problem naming it."""
    from multimodal.data.fetch import decode_photo
    from multimodal.errors import BadSampleError

    out = []
    for url in _listed(urls):
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise Problem(f"field 'image_url' must hold http(s) URLs, not '{str(url)[:80]}'")
        try:
            photo = decode_photo(fetcher.fetch(url), url)
        except BadSampleError as err:
            raise Problem(str(err), 422) from None
        if photo.width * photo.height > max_pixels:
            raise Problem(f"photo {url} is {photo.width}x{photo.height} pixels, over the limit of {max_pixels}", 413)
        out.append(photo)
    return out


def _decoded(data: Any, name: str, max_pixels: int) -> Any:
    """One upload (``name``: how errors call it) as an RGB PIL image."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    from multimodal.data.images import to_rgb

    if isinstance(data, str):
        raise Problem(f"field {name} must be an uploaded file (multipart/form-data), not text")
    if not data:
        raise Problem(f"upload {name} is empty")
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise Problem(f"upload {name} is {width}x{height} pixels, over the limit of {max_pixels}", 413)
            img.load()
            return to_rgb(ImageOps.exif_transpose(img))
    except UnidentifiedImageError:
        raise Problem(f"upload {name} is not an image (or a format PIL cannot read)", 415) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise Problem(f"upload {name} is an unreadable image ({err})") from None
