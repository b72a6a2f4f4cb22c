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
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile

from multimodal.serve import DEFAULT_MAX_UPLOAD, FORM_SLACK


@dataclass
class Problem(Exception):
    """A request that cannot be answered, with its HTTP status and a one-line message."""

    message: str
    status: int = 400

    def response(self) -> JSONResponse:
        return JSONResponse({"detail": self.message}, status_code=self.status)


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
            form = await request.form(max_files=4, max_fields=64)
        except HTTPException:
            raise
        except Exception as err:  # noqa: BLE001 - a malformed form body is the client's mistake
            raise HTTPException(400, f"the request body is not a readable form ({err})") from err
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                data = await value.read(limit + 1)
                await value.close()
                if len(data) > limit:
                    raise HTTPException(413, f"upload '{key}' is over the limit of {limit} bytes")
                payload[key] = data
            else:
                payload[key] = value
    elif kind.startswith("application/json"):
        try:
            body = await request.json()
        except ValueError as err:
            raise HTTPException(400, f"the request body is not valid JSON ({err})") from err
        if not isinstance(body, dict):
            raise HTTPException(400, "the JSON body must be an object of fields")
        payload.update(body)
    return payload


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
    from PIL import Image, ImageOps, UnidentifiedImageError

    from multimodal.data.images import to_rgb

    data = payload.get(key)
    if data is None:
        return None
    if isinstance(data, str):
        raise Problem(f"field '{key}' must be an uploaded file (multipart/form-data), not text")
    if not data:
        raise Problem(f"upload '{key}' is empty")
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise Problem(f"upload '{key}' is {width}x{height} pixels, over the limit of {max_pixels}", 413)
            img.load()
            return to_rgb(ImageOps.exif_transpose(img))
    except UnidentifiedImageError:
        raise Problem(f"upload '{key}' is not an image (or a format PIL cannot read)", 415) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise Problem(f"upload '{key}' is an unreadable image ({err})") from None
