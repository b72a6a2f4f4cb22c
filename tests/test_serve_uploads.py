"""Multipart bodies that end early: the service's request reader (:func:`multimodal.serve.requests.read_payload`,
the FastAPI dependency of every task endpoint) with the installed Starlette and python-multipart, over ASGI.

python-multipart's ``finalize`` does not check for the closing boundary and Starlette returns the parts completed
so far, so a body cut off inside the photo's part used to read as a form without a photo ("send a photo")."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import SAMPLE_IMAGES
from fastapi import FastAPI
from fastapi.testclient import TestClient

from multimodal.serve.requests import Payload

FORM = {"content-type": "multipart/form-data; boundary=zz"}


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    app = FastAPI()

    @app.post("/read")
    async def read(payload: Payload) -> dict:
        return {k: len(v) if isinstance(v, bytes) else v for k, v in payload.items()}

    with TestClient(app) as test_client:
        yield test_client


def body(photo: bytes) -> bytes:
    """A form of a text field ``k`` and a photo ``image``, closed by its final boundary."""
    return (b'--zz\r\nContent-Disposition: form-data; name="k"\r\n\r\n5\r\n'
            b'--zz\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n" + photo + b"\r\n--zz--\r\n")  # fmt: skip


def test_a_whole_form_is_read(client: TestClient) -> None:
    photo = next(SAMPLE_IMAGES.glob("*.jpg")).read_bytes()
    whole = body(photo)
    assert client.post("/read", content=whole, headers=FORM).json() == {"k": "5", "image": len(photo)}
    # an epilogue after the closing boundary, and a form as httpx writes it, are whole too
    assert client.post("/read", content=whole + b"\r\ntrailing", headers=FORM).status_code == 200
    sent = client.post("/read", files={"image": ("a.jpg", photo, "image/jpeg")}, data={"k": "3"})
    assert sent.json() == {"k": "3", "image": len(photo)}


@pytest.mark.parametrize(
    ("keep", "where"),
    [
        (0.5, "inside the part 'image'"),  # half the photo
        (-9, "inside the part 'image'"),  # the photo whole, the closing boundary not
        (-4, "inside the part 'image'"),  # the closing boundary without its final '--'
        (30, "inside a part's headers"),
        (0, "after 0 complete part(s)"),  # an empty body
    ],
)
def test_a_body_cut_off_is_refused_as_cut_off(client: TestClient, keep: float, where: str) -> None:
    photo = next(SAMPLE_IMAGES.glob("*.jpg")).read_bytes()
    whole = body(photo)
    end = int(len(whole) * keep) if isinstance(keep, float) else (keep if keep >= 0 else len(whole) + keep)
    cut = whole[:end]
    for content in (cut, iter([cut[i : i + 4096] for i in range(0, end, 4096)])):  # in one piece, then streamed
        answer = client.post("/read", content=content, headers=FORM)
        assert answer.status_code == 400, answer.text
        detail = answer.json()["detail"]
        assert detail.startswith("upload cut off") and where in detail, detail


def test_a_body_that_is_no_form_is_refused_as_such(client: TestClient) -> None:
    answer = client.post("/read", content=b"x" * 1000, headers=FORM)
    assert answer.status_code == 400 and "not a readable form" in answer.json()["detail"]
