"""Photos by URL and in object storage, against a real HTTP server on 127.0.0.1 and fsspec's in-memory bucket.

Every failure a photo URL can have is a one-line BadSampleError within its time bound; a second fetcher on the same
cache answers without a request to the server.
"""

from __future__ import annotations

import importlib.util
import io
import multiprocessing
import pickle
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest
from PIL import Image

from benchmarks.photo_server import PhotoServer
from multimodal.data.fetch import FetchOptions, PhotoFetcher, decode_photo, is_remote, photo_url
from multimodal.errors import BadSampleError

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "examples" / "fashion-products" / "images"
PHOTOS = sorted(p.name for p in IMAGES.glob("*.jpg"))[:6]
TIMEOUT_S = 1.0
BACKOFF_S = 0.05


@pytest.fixture(scope="module")
def server() -> Iterator[PhotoServer]:
    with PhotoServer(IMAGES) as running:
        yield running


def fetcher(cache: Path | str = "", **kwargs: object) -> PhotoFetcher:
    options = dict(timeout_s=TIMEOUT_S, retries=1, backoff_s=BACKOFF_S, cache_dir=str(cache)) | kwargs
    return PhotoFetcher(FetchOptions(**options))


def test_fetches_and_decodes_a_real_photo(server: PhotoServer, tmp_path: Path) -> None:
    url = f"{server.url}/photos/{PHOTOS[0]}"
    photos = fetcher(tmp_path)
    data = photos.fetch(url)
    assert data == (IMAGES / PHOTOS[0]).read_bytes()
    image = decode_photo(data, url)
    with Image.open(IMAGES / PHOTOS[0]) as original:
        assert image.mode == "RGB" and image.size == original.size
    assert photos.stats == {"requests": 1, "cache_hits": 0, "bytes_fetched": len(data), "failures": 0}


# route, the reason (a regular expression), requests the server sees, least seconds it takes (at most: the URL's bound)
FAILURES = [
    ("/status/404", r"HTTP 404 \(not found\)", 1, 0),
    ("/status/403", r"HTTP 403 \(forbidden\)", 1, 0),
    ("/status/500", r"HTTP 500 \(after 2 tries\)", 2, BACKOFF_S),
    ("/status/429", r"HTTP 429 \(after 2 tries\)", 2, BACKOFF_S),
    ("/loop", r"redirect loop \(more than 10 redirects\)", 11, 0),
    ("/huge", r"body over max_bytes=1048576 \(Content-Length 2147483648\)", 1, 0),
    ("/huge?nolength=1", r"body over max_bytes=1048576", 1, 0),
    ("/reset", r"connection (reset by the server|closed without an answer) \(after 2 tries\)", 2, BACKOFF_S),
    ("/hang", r"timeout after 1s \(after 2 tries\)", 2, 2 * TIMEOUT_S),
]


@pytest.mark.parametrize(("route", "reason", "requests", "least_s"), FAILURES)
def test_each_failure_is_a_one_line_error_within_its_bound(
    server: PhotoServer, route: str, reason: str, requests: int, least_s: float
) -> None:
    path = route.split("?")[0]
    before = server.hits[path]
    url = server.url + route
    photos = fetcher(max_bytes=2**20)
    start = time.monotonic()
    with pytest.raises(BadSampleError) as caught:
        photos.fetch(url)
    elapsed = time.monotonic() - start
    message = str(caught.value)
    assert re.fullmatch(f"cannot fetch photo {re.escape(url)}: {reason}", message), message
    bound = photos.options.bound_s()  # 2 attempts of 1 s and one back-off
    assert least_s <= elapsed <= bound + 0.5, f"{route} took {elapsed:.2f}s"
    assert server.hits[path] - before >= requests  # aiohttp may resend once on a dropped keep-alive connection
    assert photos.stats["failures"] == 1 and photos.stats["bytes_fetched"] == 0


def test_a_flaky_photo_is_retried_with_back_off(server: PhotoServer) -> None:
    url = f"{server.url}/flaky/1/{PHOTOS[1]}"
    photos = fetcher()
    assert photos.fetch(url) == (IMAGES / PHOTOS[1]).read_bytes()
    assert photos.stats["requests"] == 2 and server.hits[f"/flaky/1/{PHOTOS[1]}"] == 2
    with pytest.raises(BadSampleError, match=r"HTTP 500 \(after 2 tries\)"):
        fetcher().fetch(f"{server.url}/flaky/5/{PHOTOS[1]}")


def test_fetch_many_keeps_order_with_mixed_urls(server: PhotoServer) -> None:
    good = [f"{server.url}/photos/{name}" for name in PHOTOS[:3]]
    urls = [good[0], f"{server.url}/status/404", good[1], f"{server.url}/hang", good[2], good[0], f"{server.url}/html"]
    photos = fetcher(concurrency=4)
    start = time.monotonic()
    results = photos.fetch_many(urls)
    assert time.monotonic() - start < photos.options.bound_s() + 1
    assert [type(r).__name__ for r in results] == ["bytes", "BadSampleError", "bytes", "BadSampleError"] + ["bytes"] * 3
    assert results[0] == results[5] == (IMAGES / PHOTOS[0]).read_bytes()
    assert results[2] == (IMAGES / PHOTOS[1]).read_bytes() and results[4] == (IMAGES / PHOTOS[2]).read_bytes()
    assert "HTTP 404" in str(results[1]) and "timeout after 1s" in str(results[3])
    assert photos.stats["failures"] == 2 and fetcher().fetch_many([]) == []


def test_a_second_fetcher_is_served_from_the_cache(server: PhotoServer, tmp_path: Path) -> None:
    urls = [f"{server.url}/photos/{name}" for name in PHOTOS]
    first = fetcher(tmp_path).fetch_many(urls)
    assert all(isinstance(r, bytes) for r in first)
    before = server.requests
    again = fetcher(tmp_path)
    assert again.fetch_many(urls) == first
    assert server.requests == before
    assert again.stats == {"requests": 0, "cache_hits": len(urls), "bytes_fetched": 0, "failures": 0}


def test_the_same_photo_under_two_urls_is_stored_once(server: PhotoServer, tmp_path: Path) -> None:
    photos = fetcher(tmp_path)
    photos.fetch(f"{server.url}/photos/{PHOTOS[0]}")
    photos.fetch(f"{server.url}/flaky/0/{PHOTOS[0]}")
    assert len(list((tmp_path / "blobs").glob("*/*"))) == 1
    assert len(list((tmp_path / "urls").glob("*/*"))) == 2
    assert photos.cache is not None and photos.cache.total_bytes() == (IMAGES / PHOTOS[0]).stat().st_size


def test_eviction_keeps_the_cache_under_its_limit(server: PhotoServer, tmp_path: Path) -> None:
    sizes = [(IMAGES / name).stat().st_size for name in PHOTOS]
    limit = int(2.5 * max(sizes))
    photos = fetcher(tmp_path, cache_bytes=limit)
    for name in PHOTOS:
        photos.fetch(f"{server.url}/photos/{name}")
        time.sleep(0.01)  # distinct "last used" times
        assert photos.cache is not None and photos.cache.total_bytes() <= limit
    before = photos.stats["requests"]
    photos.fetch(f"{server.url}/photos/{PHOTOS[-1]}")  # the most recent is kept
    assert photos.stats["requests"] == before and photos.stats["cache_hits"] == 1
    photos.fetch(f"{server.url}/photos/{PHOTOS[0]}")  # the oldest was evicted: fetched again
    assert photos.stats["requests"] == before + 1
    kept = {p.name for p in (tmp_path / "urls").glob("*/*")}
    assert len(kept) < len(PHOTOS)  # entries of evicted photos are dropped with them


def test_allow_hosts_refuses_other_hosts_and_private_addresses(server: PhotoServer) -> None:
    url = f"{server.url}/photos/{PHOTOS[0]}"
    before = server.requests
    cases = [
        (("cdn.example.com",), url, "host '127.0.0.1' is not allowed (allow_hosts: cdn.example.com)"),
        (("127.0.0.1",), url, "a loopback address (refused when allow_hosts is set)"),
        (("localhost",), url.replace("127.0.0.1", "localhost"), "a loopback address"),
        (("10.1.2.3",), "http://10.1.2.3/a.jpg", "a private address"),
        (("169.254.169.254",), "http://169.254.169.254/latest/meta-data", "a link-local address"),
    ]
    for hosts, target, reason in cases:
        with pytest.raises(BadSampleError, match=reason.replace("(", r"\(").replace(")", r"\)")):
            fetcher(allow_hosts=hosts).fetch(target)
    assert server.requests == before
    assert isinstance(fetcher().fetch(url), bytes)  # without an allow-list (batch jobs) loopback is fine


def test_memory_bucket_urls_and_relative_refs() -> None:
    bucket = fsspec.filesystem("memory")
    bucket.pipe("memory://shop-test/img/a.jpg", (IMAGES / PHOTOS[0]).read_bytes())
    url = photo_url("memory://shop-test/img/", "a.jpg")
    assert url == "memory://shop-test/img/a.jpg"
    photos = fetcher()
    assert photos.fetch(url) == (IMAGES / PHOTOS[0]).read_bytes()
    with pytest.raises(BadSampleError, match=r"^cannot fetch photo memory://shop-test/img/b.jpg: not found$"):
        photos.fetch("memory://shop-test/img/b.jpg")
    with pytest.raises(BadSampleError, match="body over max_bytes=100$"):
        fetcher(max_bytes=100).fetch(url)
    with pytest.raises(BadSampleError, match="'other' is not allowed"):
        fetcher(allow_hosts=("shop-test",)).fetch("memory://other/a.jpg")


@pytest.mark.skipif(importlib.util.find_spec("s3fs") is not None, reason="s3fs is installed")
def test_a_missing_backend_names_the_package_to_install() -> None:
    with pytest.raises(BadSampleError) as caught:
        fetcher().fetch("s3://shop/img/a.jpg")
    assert str(caught.value) == "cannot fetch photo s3://shop/img/a.jpg: install s3fs to read s3:// photos"
    with pytest.raises(BadSampleError, match="unknown URL scheme 'nosuch://'"):
        fetcher().fetch("nosuch://shop/a.jpg")


def test_is_remote_and_photo_url() -> None:
    assert [is_remote(r) for r in ["https://a/b.jpg", "s3://b/k", "gs://b/k", "memory://b/k"]] == [True] * 4
    assert [is_remote(r) for r in ["a/b.jpg", "/abs/b.jpg", "file:///abs/b.jpg", "C:\\img\\b.jpg"]] == [False] * 4
    assert photo_url("https://cdn.shop/img", "a/1.jpg") == "https://cdn.shop/img/a/1.jpg"
    assert photo_url("s3://shop/img/", "1.jpg") == "s3://shop/img/1.jpg"
    assert photo_url("images/", "https://cdn.shop/1.jpg") == "https://cdn.shop/1.jpg"  # a URL in the cell wins
    assert photo_url("images/", "1.jpg") is None and photo_url(None, "1.jpg") is None
    assert photo_url("https://cdn.shop/img/", "/local/1.jpg") is None


def test_decode_photo_refuses_what_is_not_a_photo(server: PhotoServer) -> None:
    page = fetcher().fetch(f"{server.url}/html")
    with pytest.raises(BadSampleError, match=r"^not an image: row 3 photo 1 is an HTML page$"):
        decode_photo(page, "row 3 photo 1")
    with pytest.raises(BadSampleError, match="is JSON$"):
        decode_photo(b'{"error": "denied"}', "u")
    with pytest.raises(BadSampleError, match="is an empty body$"):
        decode_photo(b"", "u")
    jpeg = (IMAGES / PHOTOS[0]).read_bytes()
    with pytest.raises(BadSampleError, match="^unreadable image u: "):
        decode_photo(jpeg[: len(jpeg) // 2], "u")  # truncated
    rgba = io.BytesIO()
    Image.new("RGBA", (4, 3), (255, 0, 0, 0)).save(rgba, format="PNG")
    image = decode_photo(rgba.getvalue(), "u")
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (255, 255, 255)  # transparent on white


def test_the_fetcher_pickles_and_works_after(server: PhotoServer, tmp_path: Path) -> None:
    photos = fetcher(tmp_path)
    url = f"{server.url}/photos/{PHOTOS[2]}"
    photos.fetch(url)
    copy = pickle.loads(pickle.dumps(photos))
    assert copy.fetch(url) == photos.fetch(url) and copy.stats["cache_hits"] == 1
    fresh = pickle.loads(pickle.dumps(fetcher()))
    assert fresh.fetch(url) == (IMAGES / PHOTOS[2]).read_bytes() and fresh.stats["requests"] == 1


def _fetch_in_child(photos: PhotoFetcher, url: str, answers: multiprocessing.Queue) -> None:
    answers.put(len(photos.fetch(url)))


def test_a_forked_worker_fetches_with_its_own_connections(server: PhotoServer) -> None:
    photos = fetcher()
    photos.fetch(f"{server.url}/photos/{PHOTOS[0]}")  # the parent's fsspec loop and session exist now
    context = multiprocessing.get_context("fork")  # as DataLoader workers start on Linux
    answers = context.Queue()
    child = context.Process(target=_fetch_in_child, args=(photos, f"{server.url}/photos/{PHOTOS[1]}", answers))
    child.start()
    child.join(20)
    assert child.exitcode == 0 and answers.get(timeout=1) == (IMAGES / PHOTOS[1]).stat().st_size


def test_processes_share_one_cache(server: PhotoServer, tmp_path: Path) -> None:
    urls = [f"{server.url}/photos/{name}" for name in PHOTOS] + [f"{server.url}/flaky/0/{name}" for name in PHOTOS]
    code = (
        "import sys; from multimodal.data.fetch import FetchOptions, PhotoFetcher; "
        "r = PhotoFetcher(FetchOptions(cache_dir=sys.argv[1])).fetch_many(sys.argv[2:]); "
        "assert all(isinstance(x, bytes) for x in r)"
    )
    workers = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), *urls], cwd=ROOT) for _ in range(3)]
    assert [w.wait(30) for w in workers] == [0, 0, 0]
    assert len(list((tmp_path / "blobs").glob("*/*"))) == len(PHOTOS)  # stored once, whole
    assert not list(tmp_path.glob("*/*/.tmp-*"))
    again = fetcher(tmp_path)
    assert again.fetch_many(urls)[0] == (IMAGES / PHOTOS[0]).read_bytes() and again.stats["requests"] == 0


def test_importing_the_fetcher_imports_no_torch() -> None:
    code = "import sys, multimodal.data.fetch; assert 'torch' not in sys.modules and 'aiohttp' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_the_server_stops_with_a_request_hanging() -> None:
    photos = fetcher(timeout_s=10, retries=0)
    with PhotoServer(IMAGES) as running:
        name = f"photo-server-{running.url.rsplit(':', 1)[1]}"
        hanging = threading.Thread(target=photos.fetch_many, args=[[running.url + "/hang"]])
        hanging.start()
        while running.hits["/hang"] == 0:
            time.sleep(0.01)
        assert [t for t in threading.enumerate() if t.name.startswith(name)]
        start = time.monotonic()
    assert time.monotonic() - start < 2
    assert not [t for t in threading.enumerate() if t.name.startswith(name)]  # no thread left serving
    hanging.join(5)
    assert not hanging.is_alive()


def test_the_server_runs_as_a_program() -> None:
    command = [sys.executable, "-m", "benchmarks.photo_server", "--root", str(IMAGES), "--latency_ms", "20"]
    assert "--latency_ms" in subprocess.run([*command[:3], "--help"], cwd=ROOT, capture_output=True, text=True).stdout
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True) as process:
        try:
            url = process.stdout.readline().strip()
            start = time.monotonic()
            assert fetcher().fetch(f"{url}/photos/{PHOTOS[0]}") == (IMAGES / PHOTOS[0]).read_bytes()
            assert time.monotonic() - start >= 0.02  # its --latency_ms
        finally:
            process.terminate()
