"""``multimodal serve --index DIR`` follows its index: after ``multimodal index DIR --add/--remove`` or a rebuild,
the running service answers from the new build within a bounded time, every answer from one build that it names
(``index_version``), never with a product that build does not hold, and no request fails because of the swap.

A real service (subprocess, loopback port) over a real index of the tiny retriever's export; the updates are made
in this process with :func:`multimodal.search.updates.update_index` (fast), plus one run of the real command and
one full rebuild."""

from __future__ import annotations

import os
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
import pytest
from conftest import ROOT, SAMPLE_IMAGES
from test_serve import Service

from multimodal import cli
from multimodal.search.updates import update_index

N_BASE, N_NEW, K = 30, 10, 12
BOUND_S = 10.0  # an update must reach the answers within this (the follower looks every 0.2 s; slack for a busy box)


@dataclass
class Catalogue:
    folder: Path  # the index (a link to its newest build)
    base: Path  # the export the index was built from
    new: Path  # an export of N_NEW other products, for --add
    base_products: pd.DataFrame
    new_products: pd.DataFrame


def export(products: pd.DataFrame, checkpoint: Path, out: Path) -> Path:
    products.to_csv(out.with_suffix(".csv"), index=False)
    cli.main(["export", "--ckpt_path", str(checkpoint), "--input", str(out.with_suffix(".csv")),
              "--image_root", str(SAMPLE_IMAGES), "--out", str(out), "--no_progress"])  # fmt: skip
    return out


@pytest.fixture(scope="module")
def catalogue(trained: dict[str, Path], sample_df: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Catalogue:
    root = tmp_path_factory.mktemp("follow")
    rows = sample_df.iloc[::19].head(N_BASE + N_NEW).reset_index(drop=True)
    base, new = rows.head(N_BASE).reset_index(drop=True), rows.tail(N_NEW).reset_index(drop=True)
    cat = Catalogue(root / "index", export(base, trained["retriever"], root / "base"),
                    export(new, trained["retriever"], root / "new"), base, new)  # fmt: skip
    cli.main(["index", str(cat.base), "--out", str(cat.folder)])
    return cat


@pytest.fixture(scope="module")
def service(catalogue: Catalogue, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = Service(["--index", catalogue.folder, "--max_batch_size", "8", "--batch_timeout", "0.01"],
                  tmp_path_factory.mktemp("serve-follow") / "serve.log")  # fmt: skip
    yield svc
    assert svc.stop() == 0, svc.tail()


def current(folder: Path) -> tuple[str, set[str]]:
    """The version (build folder name) the index links to now, and the ids of that build."""
    build = Path(os.path.realpath(folder))
    return build.name, set(pd.read_parquet(build / "products.parquet", columns=["id"])["id"].astype(str))


def wait_for(check: object, seconds: float = BOUND_S) -> tuple[httpx.Response, float]:
    """Call ``check()`` (a response or None) until it gives a response; that response and the seconds taken."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        got = check()  # type: ignore[operator]
        if got is not None:
            return got, time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"the service did not follow the update within {seconds} s")


def test_added_then_removed_product_is_found_then_gone(service: Service, catalogue: Catalogue) -> None:
    update_index(catalogue.folder, add=catalogue.new)
    added, ids = current(catalogue.folder)
    pid, title, image = (str(catalogue.new_products[c].iat[0]) for c in ("id", "title", "image"))
    assert pid in ids

    def like(status: int, version: str) -> httpx.Response | None:
        answer = httpx.get(service.url + "/search", params={"like": pid, "k": 3}, timeout=30)
        return answer if answer.status_code == status and answer.json()["index_version"] == version else None

    found, took_add = wait_for(lambda: like(200, added))
    assert len(found.json()["results"]) == 3
    update_index(catalogue.folder, remove=[pid])
    removed, ids = current(catalogue.folder)
    assert pid not in ids and removed != added
    gone, took_remove = wait_for(lambda: like(404, removed))
    assert "not in the index" in gone.json()["detail"]
    by_text = httpx.get(service.url + "/search", params={"text": title, "k": len(ids)}, timeout=30).json()
    assert by_text["index_version"] == removed and len(by_text["results"]) == len(ids)
    assert pid not in {h["id"] for h in by_text["results"]} <= ids
    info = httpx.get(service.url + "/info", timeout=30).json()["model"]["models"]["index"]
    assert info["index_version"] == removed and info["count"] == len(ids)
    photo = httpx.get(f"{service.url}/images/{image}", timeout=30)  # the HTTP process reads the current build too
    assert photo.status_code == 200 and photo.headers["x-index-version"] == removed
    print(f"update reached the answers in: add {took_add:.3f} s, remove {took_remove:.3f} s")


@dataclass
class Answer:
    received: float
    status: int
    version: str | None
    ids: list[str]
    detail: str = ""


def ask(url: str, queries: list[dict], stop: threading.Event, seed: int, log: list[Answer]) -> None:
    """One client: searches one after the other until ``stop`` is set."""
    rng = random.Random(seed)
    with httpx.Client(base_url=url, timeout=60) as http:
        while not stop.is_set():
            try:
                answer = http.get("/search", params=rng.choice(queries))
                body = answer.json()
                ids = [h["id"] for h in body.get("results", [])]
                log.append(Answer(time.monotonic(), answer.status_code, body.get("index_version"), ids,
                                  "" if answer.status_code == 200 else answer.text[:300]))  # fmt: skip
            except Exception as err:  # noqa: BLE001 - a failed request is counted, not raised in the thread
                log.append(Answer(time.monotonic(), 0, None, [], repr(err)))


def update(n: int, cat: Catalogue, rng: random.Random, present: set[str], tmp: Path) -> None:
    """The n-th update: the real command once, a full rebuild once, else alternately add the new products back
    and remove a random share of them (in this process)."""
    new_ids = list(cat.new_products["id"].astype(str))
    if n == 40:  # the real command, both flags: the new products back, and one base product removed for good
        (tmp / "gone.txt").write_text(str(cat.base_products["id"].iat[-1]) + "\n")
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, "-m", "multimodal.cli", "index", str(cat.folder), "--add",
                               str(cat.new), "--remove", str(tmp / "gone.txt")], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0 and '"removed": 1' in done.stdout, done.stderr
    elif n == 70:  # a full rebuild from the base export: the new products gone, the removed base product back
        cli.main(["index", str(cat.base), "--out", str(cat.folder)])
    elif n % 2 and present & set(new_ids):
        update_index(cat.folder, remove=rng.sample(sorted(present & set(new_ids)), rng.randint(1, 4)))
    else:
        update_index(cat.folder, add=cat.new)


def test_searches_during_100_updates_answer_from_one_version_each(
    service: Service, catalogue: Catalogue, tmp_path: Path
) -> None:
    rng = random.Random(0)
    kept = [str(i) for i in catalogue.base_products["id"].iloc[:-1]]  # never removed: 'like' always answers
    titles = [*catalogue.new_products["title"], *catalogue.base_products["title"].head(10)]
    queries = [{"text": t, "k": K} for t in titles] + [{"like": i, "k": K} for i in kept]
    version, ids = current(catalogue.folder)
    versions, order, published = {version: ids}, {version: 0}, [time.monotonic()]
    stop, log = threading.Event(), []
    clients = [threading.Thread(target=ask, args=(service.url, queries, stop, s, log)) for s in range(4)]
    for c in clients:
        c.start()
    try:
        for n in range(1, 101):
            update(n, catalogue, rng, ids, tmp_path)
            version, ids = current(catalogue.folder)  # this process is the only writer: the build it just made
            published.append(time.monotonic())
            versions[version], order[version] = ids, n
            time.sleep(rng.uniform(0.0, 0.25))
        deadline = time.monotonic() + BOUND_S  # until the last update has been answered from
        while time.monotonic() < deadline and not any(a.version == version for a in log[-20:]):
            time.sleep(0.05)
    finally:
        stop.set()
        for c in clients:
            c.join(timeout=120)
    failed = [a for a in log if a.status != 200]
    unknown = [a for a in log if a.status == 200 and a.version not in versions]
    wrong = [a for a in log if a.version in versions and not set(a.ids) <= versions[a.version]]
    short = [a for a in log if a.status == 200 and (len(a.ids) != K or len(set(a.ids)) != K)]
    lags = []
    for n in range(1, 101):  # an update is reflected by the first answer from its build or a later one
        first = next((a.received for a in log if order.get(a.version, -1) >= n), None)
        assert first is not None, f"update {n} was never answered from"
        lags.append(max(0.0, first - published[n]))
    seen = {a.version for a in log}
    print(f"{len(log)} searches during 100 updates: {len(failed)} failed, {len(wrong)} with a product absent from "
          f"their version, {len(unknown)} of an unknown version; {len(seen)} of {len(versions)} versions answered "
          f"from; update -> first answer reflecting it: p50 {statistics.median(lags):.3f} s, "
          f"max {max(lags):.3f} s")  # fmt: skip
    assert not failed, failed[:3]
    assert not unknown and not wrong and not short, (unknown[:3], wrong[:3], short[:3])
    assert len(log) > 200 and len(seen) > 10
    assert statistics.median(lags) < BOUND_S / 4 and max(lags) < BOUND_S


def test_the_follower_reuses_the_model_and_keeps_answering_past_a_damaged_build(
    catalogue: Catalogue, tmp_path: Path
) -> None:
    """In a worker's place (no server): an update swaps in a build that shares the loaded model; a build that
    cannot be read is skipped and the one before keeps answering; a batch that took the old build finishes on it."""
    from multimodal.search.query import Query, search_many
    from multimodal.serve.live import LiveIndex

    folder = tmp_path / "index"
    cli.main(["index", str(catalogue.base), "--out", str(folder)])
    live = LiveIndex(folder, "cpu", "torch", interval=0)  # refreshed by hand below
    first = live.current
    assert not live.refresh()
    update_index(folder, remove=[str(catalogue.base_products["id"].iat[0])])
    assert live.refresh() and live.current.version == current(folder)[0] != first.version
    assert live.current.encoder.model is first.encoder.model  # same checkpoint: the model is not loaded again
    assert live.current.encoder.checkpoint.parent == live.current.index.folder
    query = Query(text=str(catalogue.base_products["title"].iat[1]), k=5)
    assert len(search_many(first.index, first.encoder, [query])[0]) == 5  # the old build still answers its batch
    good = live.current
    broken = Path(os.path.realpath(folder)).with_name("broken")
    shutil.copytree(os.path.realpath(folder), broken)
    (broken / "index.faiss").write_bytes(b"not a faiss index")
    link = folder.with_name("new-link")
    link.symlink_to(broken.relative_to(folder.parent))
    os.replace(link, folder)
    assert not live.refresh() and live.current is good  # logged, skipped, not tried again until the link moves
    assert not live.refresh()
    cli.main(["index", str(catalogue.base), "--out", str(folder)])  # a rebuild: the link moves on
    assert live.refresh() and live.current.version == current(folder)[0]
    assert len(search_many(live.current.index, live.current.encoder, [query])[0]) == 5
