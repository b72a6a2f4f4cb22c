"""Photos by URL, end to end, against a real HTTP server on 127.0.0.1 started here: the Python API, a batch job and
training read the same photos as from local files; every way a URL fails is that row's error within its time
bound; a second run is served from the photo cache with no request to the server."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLE_IMAGES, fit_tiny, run_cli

import multimodal
from benchmarks.photo_server import PhotoServer
from multimodal.data.fetch import FetchOptions

NAMES = sorted(p.name for p in SAMPLE_IMAGES.glob("*.jpg"))[:6]
FAILING = {"404": "/status/404", "500": "/status/500", "loop": "/loop", "huge": "/huge", "html": "/html",
           "reset": "/reset", "hang": "/hang"}  # fmt: skip
FAST = FetchOptions(timeout_s=1.0, retries=1, backoff_s=0.05, max_bytes=4 * 2**20)


@pytest.fixture(scope="module")
def server() -> Iterator[PhotoServer]:
    with PhotoServer(SAMPLE_IMAGES) as photos:
        yield photos


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MULTIMODAL_CACHE", str(tmp_path / "cache"))  # never the user's own cache
    return tmp_path / "cache" / "photos"


def probs(api: Any, products: list[dict[str, Any]]) -> np.ndarray:
    return np.concatenate([df.to_numpy(float) for df in api.predict_proba(products).values()], axis=1)


def test_the_python_api_reads_photo_urls_as_local_files(server: PhotoServer, trained, cache: Path) -> None:
    tagger = multimodal.load(trained["tagger"])
    local = [{"image": [str(SAMPLE_IMAGES / n)], "title": "Shirt"} for n in NAMES[:4]]
    remote = [{"image": [f"{server.url}/photos/{n}"], "title": "Shirt"} for n in NAMES[:4]]
    remote[1]["image"].append(f"{server.url}/photos/{NAMES[5]}")  # and one of two photos
    local[1]["image"].append(str(SAMPLE_IMAGES / NAMES[5]))
    assert np.allclose(probs(tagger, remote), probs(tagger, local), atol=1e-6)
    before = server.requests
    assert np.allclose(probs(tagger, remote), probs(tagger, local), atol=1e-6)
    assert server.requests == before  # the second time from the cache
    assert len(list(cache.rglob("*"))) > 0


def test_each_failing_url_is_its_rows_error_within_its_bound(server: PhotoServer, trained, cache: Path) -> None:
    tagger = multimodal.load(trained["tagger"], batch_size=16)
    tagger.fetch = FAST
    products = [{"id": k, "image": server.url + path, "title": "Shirt"} for k, path in FAILING.items()]
    products.append({"id": "good", "image": f"{server.url}/photos/{NAMES[0]}", "title": "Shirt"})
    start = time.monotonic()
    rows = {r["id"]: r for r in tagger.run(products)}
    elapsed = time.monotonic() - start
    assert elapsed < FAST.bound_s() + 5, elapsed  # fetched together: one bound, not one per URL
    assert "error" not in rows["good"]
    expected = {"404": "404", "500": "500", "loop": "redirect", "huge": "max", "html": "not an image",
                "reset": "", "hang": "timeout after 1s"}  # fmt: skip
    for key, words in expected.items():
        assert "error" in rows[key] and words in rows[key]["error"], rows[key]
        assert "\n" not in rows[key]["error"]


def test_fit_and_predict_with_a_url_image_root(server: PhotoServer, tmp_path: Path, sample_df: pd.DataFrame,
                                               cache: Path, capsys: Any) -> None:  # fmt: skip
    df = sample_df.iloc[::60].head(16).reset_index(drop=True)
    manifest = tmp_path / "catalogue.csv"
    df.to_csv(manifest, index=False)
    root = f"{server.url}/photos/"
    ckpt = fit_tiny("tagger", tmp_path / "fit", manifest, root, 2)  # type: ignore[arg-type]
    out, again = tmp_path / "tags.jsonl", tmp_path / "again.jsonl"
    local = tmp_path / "local.jsonl"
    run_cli(["predict", "--ckpt_path", ckpt, "--input", manifest, "--image_root", root, "--out", out], capsys)
    before = server.requests
    run_cli(["predict", "--ckpt_path", ckpt, "--input", manifest, "--image_root", root, "--out", again], capsys)
    assert server.requests == before  # every photo from the cache
    run_cli(
        ["predict", "--ckpt_path", ckpt, "--input", manifest, "--image_root", SAMPLE_IMAGES, "--out", local], capsys
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == df["id"].tolist() and not any("error" in r for r in rows)
    assert out.read_text() == again.read_text() == local.read_text()


def test_the_service_fetches_photo_urls_only_from_allowed_public_hosts(server: PhotoServer, cache: Path) -> None:
    """``image_url`` in a request: refused unless the operator lists the host, and never at a loopback address
    even when listed; an allowed host that fails is a 422 naming the URL (no model is needed to decide)."""
    from multimodal.serve.requests import Problem
    from multimodal.serve.tag_api import TagAPI

    url = f"{server.url}/photos/{NAMES[0]}"
    before = server.requests
    for hosts, status, words in [((), 403, "--fetch_hosts"), (("127.0.0.1",), 422, "loopback"),
                                 (("cdn.example.com",), 422, "not allowed")]:  # fmt: skip
        api = TagAPI("tagger.ckpt", 10**7, fetch_hosts=hosts)
        with pytest.raises(Problem) as refused:
            api.photos({"image_url": url})
        assert refused.value.status == status and words in refused.value.message, refused.value
    assert server.requests == before  # nothing was fetched


def test_a_manifest_in_a_bucket_with_photos_on_a_cdn(
    server: PhotoServer, trained, tmp_path: Path, sample_df: pd.DataFrame, cache: Path, capsys: Any
) -> None:
    """``--input memory://...`` (fsspec's in-memory file system, a bucket's stand-in) and a URL image root: the
    same rows as the local manifest and photos."""
    import fsspec

    df = sample_df.iloc[3::70].head(8)[["id", "image", "title"]]
    fsspec.filesystem("memory").pipe("/shop/catalog.csv", df.to_csv(index=False).encode())
    df.to_csv(tmp_path / "catalog.csv", index=False)
    bucket, local = tmp_path / "bucket.jsonl", tmp_path / "local.jsonl"
    run_cli(["predict", "--ckpt_path", trained["tagger"], "--input", "memory://shop/catalog.csv", "--image_root",
             f"{server.url}/photos/", "--out", bucket, "--photo_cache", ""], capsys)  # fmt: skip
    run_cli(["predict", "--ckpt_path", trained["tagger"], "--input", tmp_path / "catalog.csv", "--image_root",
             SAMPLE_IMAGES, "--out", local], capsys)  # fmt: skip
    assert bucket.read_text() == local.read_text() and len(bucket.read_text().splitlines()) == 8
    assert not cache.exists()  # --photo_cache '' keeps nothing


def test_the_documented_bucket_and_cdn_commands_run(
    server: PhotoServer, trained, tmp_path: Path, sample_df: pd.DataFrame, cache: Path, monkeypatch, capsys
) -> None:
    """docs/catalogues.md's commands as written, the CDN swapped for the loopback server and the bucket for fsspec's
    memory:// file system (photos and a Parquet dataset put there first)."""
    import shlex

    import fsspec

    text = (Path(__file__).resolve().parents[1] / "docs" / "catalogues.md").read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [shlex.split(line)[1:] for line in block.splitlines() if line.startswith("multimodal ")]
    assert [c[0] for c in commands] == ["predict", "export"]
    monkeypatch.chdir(tmp_path)
    df = sample_df.iloc[5::90].head(6)[["id", "image", "title"]].reset_index(drop=True)
    df.to_csv("catalog.csv", index=False)
    memory = fsspec.filesystem("memory")
    memory.pipe("/shop/catalog/part-0.parquet", df.to_parquet(index=False))
    for name in df["image"]:
        memory.pipe(f"/shop/photos/{name}", (SAMPLE_IMAGES / name).read_bytes())
    swap = {"tagger.ckpt": str(trained["tagger"]), "retriever.ckpt": str(trained["retriever"]),
            "https://cdn.shop.com/img/": f"{server.url}/photos/", "s3://shop/catalog/": "memory://shop/catalog/",
            "s3://shop/photos/": "memory://shop/photos/"}  # fmt: skip
    for command in commands:
        run_cli([swap.get(word, word) for word in command], capsys)
    assert len(Path("tags.jsonl").read_text().splitlines()) == 6
    export = json.loads(Path("emb/export.json").read_text())
    assert export["count"] == 6 and not export["skipped"] and export["image_root"] == "memory://shop/photos/"
