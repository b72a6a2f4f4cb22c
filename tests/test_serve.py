"""``multimodal serve``: the real LitServe service started in a subprocess on a free loopback port (tiny models),
every endpoint called over HTTP and compared with the Python API, bad input answered 4xx while the service keeps
serving, and the search page driven in headless Chromium."""

from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, SAMPLE_IMAGES
from PIL import Image

from benchmarks.service import wait_healthy
from multimodal import cli

N_PRODUCTS = 40


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """``multimodal serve <args>`` in its own process group (``env``: more environment; ``cwd``: its working
    folder); ``url`` once /health answers ok."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path = ROOT) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "multimodal.cli", "serve", *map(str, args),
                                          "--port", str(self.port), "--accelerator", "cpu"], cwd=cwd, env=env,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        problem = wait_healthy(self.proc, self.url, 300)
        if problem is not None:
            if self.proc.poll() is None:
                self.stop()
            raise AssertionError(f"{problem}:\n{self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> int:
        """SIGTERM, as a service manager would: the service and its workers must exit."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(f"serve did not stop on SIGTERM:\n{self.tail()}") from None


@pytest.fixture(scope="module")
def products(tmp_path_factory: pytest.TempPathFactory, sample_df: pd.DataFrame) -> pd.DataFrame:
    return sample_df.iloc[::21].head(N_PRODUCTS).reset_index(drop=True)


def catalogue_index(retriever: Path, products: pd.DataFrame, root: Path, *options: str) -> Path:
    """``products`` (photos from the sample) exported by ``retriever`` and indexed by ``multimodal index`` with
    ``options``, all under ``root``; the index folder."""
    products.to_csv(root / "catalogue.csv", index=False)
    cli.main(["export", "--ckpt_path", str(retriever), "--input", str(root / "catalogue.csv"),
              "--image_root", str(SAMPLE_IMAGES), "--out", str(root / "emb"), "--no_progress"])  # fmt: skip
    cli.main(["index", str(root / "emb"), "--out", str(root / "index"), *options])
    return root / "index"


@pytest.fixture(scope="module")
def index(trained: dict[str, Path], products: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A FAISS index over ``products`` from the tiny retriever (it has a re-ranker)."""
    return catalogue_index(trained["retriever"], products, tmp_path_factory.mktemp("search"))


@pytest.fixture(scope="module")
def service(trained: dict[str, Path], index: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """Tagger + search, small limits so that the oversize cases stay cheap."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    svc = Service(["--tagger", trained["tagger"], "--index", index, "--max_batch_size", "8", "--batch_timeout", "0.05",
                   "--max_upload_mb", "1", "--max_pixels", "1000000"], log)  # fmt: skip
    yield svc
    assert svc.stop() == 0, svc.tail()


@pytest.fixture(scope="module")
def caption_service(trained: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = Service(["--captioner", trained["captioner"], "--max_batch_size", "4"],
                  tmp_path_factory.mktemp("serve-caption") / "serve.log")  # fmt: skip
    yield svc
    assert svc.stop() == 0, svc.tail()


def test_tag_and_caption_read_several_photos(service: Service, caption_service: Service, trained, products) -> None:
    """A repeated ``image`` field is one product's photos: the answer is the Python API's for that list."""
    import multimodal

    names = products["image"].head(3).tolist()
    files = [("image", photo(n)) for n in names]
    paths = [str(SAMPLE_IMAGES / n) for n in names]
    tagger = multimodal.load(trained["tagger"])
    want = tagger.predict([{"image": paths, "title": "Blue shirt"}]).iloc[0]
    got = httpx.post(service.url + "/tag", files=files, data={"title": "Blue shirt"}, timeout=60).json()
    for attribute in tagger.classes:
        assert got[attribute] == want[attribute]
        assert got[f"{attribute}_score"] == pytest.approx(want[f"{attribute}_score"], abs=1e-4)
    caption = multimodal.load(trained["captioner"]).caption([{"image": paths}])["caption"][0]
    assert httpx.post(caption_service.url + "/caption", files=files, timeout=60).json()["caption"] == caption
    bad = httpx.post(service.url + "/tag", files=[*files[:1], ("image", ("x.jpg", b"not a jpeg", "image/jpeg"))])
    assert bad.status_code == 415 and "upload 'image' #2 is not an image" in bad.json()["detail"], bad.text


def photo(name: str) -> tuple[str, bytes, str]:
    return name, (SAMPLE_IMAGES / name).read_bytes(), "image/jpeg"


def chunked_form(size: int) -> Iterator[bytes]:
    """A multipart body sent in chunks with no Content-Length (the server cannot refuse it up front)."""
    yield b'--zz\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
    for _ in range(size // 100_000):
        yield b"x" * 100_000
    yield b"\r\n--zz--\r\n"


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------- endpoints
def test_health_info_schema_page_and_photos(service: Service) -> None:
    assert httpx.get(service.url + "/health").text == "ok"
    models = httpx.get(service.url + "/info").json()["model"]["models"]
    assert set(models) == {"tagger", "index"} and models["index"]["count"] == N_PRODUCTS
    schema = httpx.get(service.url + "/openapi.json").json()
    assert {"post"} <= set(schema["paths"]["/tag"]) and {"get", "post"} <= set(schema["paths"]["/search"])
    assert "title" in json.dumps(schema["paths"]["/tag"]["post"]["requestBody"])
    page = httpx.get(service.url + "/")
    assert page.headers["content-type"].startswith("text/html") and 'id="q"' in page.text
    name = sorted(p.name for p in SAMPLE_IMAGES.iterdir())[0]
    image = httpx.get(f"{service.url}/images/{name}")
    assert image.status_code == 200 and image.content == (SAMPLE_IMAGES / name).read_bytes()


def test_tag_answers_what_the_python_api_predicts(service: Service, trained: dict[str, Path], products) -> None:
    import multimodal

    tagger = multimodal.load(trained["tagger"])
    rows = products.head(6)
    expected = tagger.predict([{"image": str(SAMPLE_IMAGES / r.image), "title": r.title} for r in rows.itertuples()],
                              top_k=3)  # fmt: skip

    def tag(i: int) -> dict:
        r = rows.iloc[i]
        answer = httpx.post(service.url + "/tag", files={"image": photo(r["image"])},
                            data={"title": r["title"], "top_k": "3", "id": r["id"]}, timeout=60)  # fmt: skip
        assert answer.status_code == 200, answer.text
        return answer.json()

    with ThreadPoolExecutor(6) as pool:  # concurrent: LitServe batches them
        answers = list(pool.map(tag, range(len(rows))))
    for i, got in enumerate(answers):
        want = expected.iloc[i]
        assert got["id"] == rows["id"][i]
        for attribute in tagger.classes:
            assert got[attribute] == want[attribute]
            assert got[f"{attribute}_score"] == pytest.approx(want[f"{attribute}_score"], abs=1e-4)
            assert [c for c, _ in got[f"{attribute}_top"]] == [c for c, _ in want[f"{attribute}_top"]]
    single = httpx.post(service.url + "/tag", data={"title": rows["title"][0]}).json()  # text alone, top_k 1
    assert "id" not in single and not any(k.endswith("_top") for k in single)


def test_search_by_text_photo_like_and_rerank(service: Service, index: Path, products, capsys) -> None:
    title = products["title"][3]
    got = httpx.get(service.url + "/search", params={"text": title, "k": 5}).json()
    assert got["query"] == {"text": title, "k": 5, "rerank": 0, "mode": "dense"}
    hits = got["results"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert all(h["image_url"] == "/images/" + h["image_path"] and "title" in h for h in hits)
    cli.main(["search", str(index), "--text", title, "-k", "5"])
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [h["id"] for h in hits] == [p["id"] for p in printed]
    np.testing.assert_allclose([h["score"] for h in hits], [p["score"] for p in printed], atol=1e-4)

    where = "title = '" + title.replace("'", "''") + "'"
    filtered = httpx.get(service.url + "/search", params={"text": title, "k": 5, "where": where}).json()
    assert filtered["query"]["where"] == where and filtered["results"]
    assert all(h["title"] == title for h in filtered["results"])
    for params, status, message in (({"where": "colour = 'x'"}, 400, "unknown column 'colour'"),
                                    ({"mode": "lexical"}, 400, "needs a BM25 index")):  # fmt: skip
        bad = httpx.get(service.url + "/search", params={"text": title, **params})
        assert bad.status_code == status and message in bad.json()["detail"], bad.text

    like = httpx.get(service.url + "/search", params={"like": products["id"][0], "k": 4}).json()["results"]
    assert len(like) == 4 and products["id"][0] not in [h["id"] for h in like]
    by_photo = httpx.post(service.url + "/search", files={"image": photo(products["image"][2])},
                          data={"k": "3", "rerank": "8"}).json()["results"]  # fmt: skip
    scores = [h["rerank_score"] for h in by_photo]
    assert len(by_photo) == 3 and scores == sorted(scores, reverse=True)


def test_caption_answers_what_the_python_api_writes(caption_service: Service, trained: dict[str, Path]) -> None:
    import multimodal

    names = sorted(p.name for p in SAMPLE_IMAGES.iterdir())[:3]
    expected = multimodal.load(trained["captioner"]).caption([str(SAMPLE_IMAGES / n) for n in names], max_new_tokens=8)

    def caption(name: str) -> httpx.Response:
        return httpx.post(caption_service.url + "/caption", files={"image": photo(name)},
                          data={"max_new_tokens": "8"}, timeout=60)  # fmt: skip

    with ThreadPoolExecutor(3) as pool:
        answers = [a.json() for a in pool.map(caption, names)]
    assert [a["caption"] for a in answers] == expected["caption"].tolist()
    assert all(isinstance(a["score"], float) for a in answers)
    beams = httpx.post(caption_service.url + "/caption", files={"image": photo(names[0])},
                       data={"num_beams": "2", "max_new_tokens": "8"}, timeout=60)  # fmt: skip
    assert beams.status_code == 200 and isinstance(beams.json()["caption"], str)
    # Consensus reranking needs a caption memory, which this captioner (no rerank, no retrieval) lacks: a 400.
    rerank = httpx.post(caption_service.url + "/caption", files={"image": photo(names[0])},
                        data={"rerank": "true"}, timeout=60)  # fmt: skip
    assert rerank.status_code == 400 and "no caption memory" in rerank.json()["detail"], rerank.text


def test_absent_models_answer_404_with_a_message(service: Service, caption_service: Service) -> None:
    missing = [(service, "post", "/caption", "--captioner"), (caption_service, "post", "/tag", "--tagger"),
               (caption_service, "get", "/search", "--index"), (caption_service, "post", "/search", "--index")]  # fmt: skip
    for svc, method, path, flag in missing:
        answer = getattr(httpx, method)(svc.url + path)
        assert answer.status_code == 404 and flag in answer.json()["detail"], (path, answer.text)


# ----------------------------------------------------------------------------------------------- bad input
def raw_get(service: Service, path: str) -> tuple[int, dict]:
    """GET with the path sent exactly as written (clients normalise '../' away)."""
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=30)
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, json.loads(response.read() or b"{}")


def test_bad_input_answers_4xx_json_and_the_service_keeps_serving(service: Service, products) -> None:
    good_photo = photo(products["image"][0])
    jpeg = good_photo[1]
    cases = [
        ("non-image upload", "post", "/tag", {"files": {"image": ("a.jpg", b"plain text, not a photo", "image/jpeg")}}, 415),
        ("truncated image", "post", "/tag", {"files": {"image": ("a.jpg", jpeg[: len(jpeg) // 3], "image/jpeg")}}, 400),
        ("empty upload", "post", "/search", {"files": {"image": ("a.jpg", b"", "image/jpeg")}}, 400),
        ("image sent as text", "post", "/tag", {"data": {"image": "a.jpg"}}, 400),
        ("upload over the size limit", "post", "/tag", {"files": {"image": ("big.png", os.urandom(1_200_000), "image/png")}}, 413),
        ("chunked upload over the limit", "post", "/tag", {"content": chunked_form(3_000_000), "headers": {"content-type": "multipart/form-data; boundary=zz"}}, 413),
        ("malformed form", "post", "/tag", {"content": b"x" * 1000, "headers": {"content-type": "multipart/form-data; boundary=zz"}}, 400),
        ("image over the pixel limit", "post", "/tag", {"files": {"image": ("wide.png", png(1200, 1000), "image/png")}}, 413),
        ("nothing to tag", "post", "/tag", {"data": {"title": "  "}}, 400),
        ("a photo URL, not enabled", "post", "/tag", {"data": {"image_url": "https://cdn.example.com/a.jpg"}}, 403),
        ("unknown field", "post", "/tag", {"data": {"titel": "Black shoes"}}, 400),
        ("top_k not a number", "post", "/tag", {"data": {"title": "Black shoes", "top_k": "three"}}, 400),
        ("empty text", "get", "/search", {"params": {"text": ""}}, 400),
        ("no query", "get", "/search", {"params": {"k": "3"}}, 400),
        ("two queries", "get", "/search", {"params": {"text": "shoes", "like": products["id"][0]}}, 400),
        ("k = 0", "get", "/search", {"params": {"text": "shoes", "k": "0"}}, 400),
        ("k < 0", "get", "/search", {"params": {"text": "shoes", "k": "-3"}}, 400),
        ("k over the index size", "get", "/search", {"params": {"text": "shoes", "k": str(N_PRODUCTS + 1)}}, 400),
        ("rerank over the index size", "get", "/search", {"params": {"text": "shoes", "rerank": "1000"}}, 400),
        ("unknown product id", "get", "/search", {"params": {"like": "no-such-product"}}, 404),
        ("JSON body not an object", "post", "/search", {"json": ["shoes"]}, 400),
        ("malformed JSON", "post", "/search", {"content": b"{text:", "headers": {"content-type": "application/json"}}, 400),
        ("photo outside the catalogue", "get", "/images/missing.jpg", {}, 404),
        ("traversal, encoded", "get", "/images/..%2F..%2Fpyproject.toml", {}, 400),
        ("absolute path, encoded", "get", "/images/%2Fetc%2Fpasswd", {}, 400),
    ]  # fmt: skip
    for what, method, path, kwargs, status in cases:
        answer = getattr(httpx, method)(service.url + path, timeout=60, **kwargs) if method == "get" else \
            httpx.request("POST", service.url + path, timeout=60, **kwargs)  # fmt: skip
        ok = answer.status_code // 100 == 4 if status == 4 else answer.status_code == status
        assert ok, (what, answer.status_code, answer.text[:300])
        assert isinstance(answer.json()["detail"], str | list) and answer.json()["detail"], what
    for path in ("/images/../../pyproject.toml", "/images/..%2f..%2f..%2fetc/passwd"):
        status, body = raw_get(service, path)
        assert status in (400, 404) and body.get("detail"), (path, status, body)
    good = httpx.post(service.url + "/tag", files={"image": good_photo}, data={"title": products["title"][0]})
    assert good.status_code == 200 and "gender" in good.json()
    assert httpx.get(service.url + "/search", params={"text": "shoes", "k": 2}).status_code == 200


def test_one_bad_request_in_a_batch_fails_alone(service: Service, products) -> None:
    """A non-image upload sent together with good requests (one dynamic batch): only it gets the 4xx."""

    def send(i: int) -> int:
        upload = photo(products["image"][i]) if i % 3 else ("x.jpg", b"not an image", "image/jpeg")
        return httpx.post(service.url + "/tag", files={"image": upload}, timeout=60).status_code

    with ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(send, range(6)))
    assert statuses == [415 if i % 3 == 0 else 200 for i in range(6)]


# --------------------------------------------------------------------------------------------- the command
@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "nothing to serve"),
        (["--tagger", "missing.ckpt"], "checkpoint not found"),
        (["--index", "."], "is not a search index"),
        (["--tagger", "{captioner}"], "holds a ProductCaptioner checkpoint, not a ProductTagger"),
        (["--tagger", "{tagger}", "--port", "80"], "outside 1024..65535"),
        (["--tagger", "{tagger}", "--max_batch_size", "0"], "must be at least 1"),
    ],
)
def test_serve_command_errors(args: list[str], message: str, trained: dict[str, Path], capsys) -> None:
    args = [a.format(**{k: str(v) for k, v in trained.items()}) for a in args]
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve", *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


# ------------------------------------------------------------------------------------------------- browser
def browser() -> tuple[str, str] | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


@pytest.mark.skipif(
    browser() is None, reason="headless Chromium not installed (apt-get install chromium chromium-driver)"
)
def test_search_page_in_headless_chromium(service: Service, tmp_path: Path, products) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as Driver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    chromium, driver_path = browser()  # type: ignore[misc]
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,900", f"--user-data-dir={tmp_path / 'profile'}"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Driver(driver_path), options=options)
    try:
        driver.get(service.url + "/")
        driver.find_element(By.ID, "q").send_keys(products["title"][5])
        driver.find_element(By.CSS_SELECTOR, "#search button[type=submit]").click()

        def photos_shown(d: webdriver.Chrome) -> int:
            return d.execute_script(
                "const imgs = [...document.querySelectorAll('#results .hit img')];"
                "return imgs.length && imgs.every(i => i.complete && i.naturalWidth > 0) ? imgs.length : 0;"
            )

        assert WebDriverWait(driver, 60).until(photos_shown) == 24
        api = httpx.get(service.url + "/search", params={"text": products["title"][5], "k": 24}).json()["results"]
        cards = driver.find_elements(By.CSS_SELECTOR, "#results .hit")
        assert [c.get_attribute("data-id") for c in cards] == [h["id"] for h in api]
        assert api[0]["title"] in cards[0].text
        chosen = cards[0].get_attribute("data-id")
        cards[0].find_element(By.TAG_NAME, "button").click()  # "More like this"
        WebDriverWait(driver, 60).until(lambda d: "products like" in d.find_element(By.ID, "status").text)
        assert WebDriverWait(driver, 60).until(photos_shown) == 24
        ids = [e.get_attribute("data-id") for e in driver.find_elements(By.CSS_SELECTOR, "#results .hit")]
        assert chosen not in ids and len(set(ids)) == 24
        title = products["title"][5]  # a filter typed into the page (behind "Advanced") reaches the service
        driver.find_element(By.ID, "q").send_keys(title)  # "More like this" left the query box for its own chip
        driver.find_element(By.ID, "advanced-toggle").click()
        driver.find_element(By.ID, "where").send_keys("title = '" + title.replace("'", "''") + "'")
        driver.find_element(By.CSS_SELECTOR, "#search button[type=submit]").click()
        WebDriverWait(driver, 60).until(lambda d: "result" in d.find_element(By.ID, "status").text  # 1 result for
                                        and d.find_elements(By.CSS_SELECTOR, "#results .hit"))  # fmt: skip
        shown = [c.text for c in driver.find_elements(By.CSS_SELECTOR, "#results .hit")]
        assert shown and all(text.startswith(title) for text in shown)
        shot = tmp_path / "page.png"
        driver.save_screenshot(str(shot))
        assert Image.open(shot).size[0] >= 1000
    finally:
        driver.quit()
