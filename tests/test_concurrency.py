"""Concurrent use of one output: searches during index rebuilds see the old or the new index, never a mix; two
jobs on one output: the second is refused while the first runs."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from multimodal.errors import UserError
from multimodal.search.build import build_index
from multimodal.search.index import load_index, save_index
from multimodal.writers import output_lock

N, DIM = 300, 16


def catalogue(version: int) -> tuple[np.ndarray, pd.DataFrame]:
    """Two catalogues of the same size whose ids and vectors differ: a mix of the two gives answers of neither."""
    rng = np.random.default_rng(version)
    x = rng.standard_normal((N, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, pd.DataFrame({"id": [f"v{version}-{i}" for i in range(N)]})


def rebuild(folder: str, times: int) -> None:
    for n in range(times):
        vectors, products = catalogue(n % 2)
        save_index(folder, build_index(vectors), products, {"kind": "flat", "dim": DIM, "count": N, "version": n % 2})


def answers(index_folder: Path, queries: np.ndarray) -> tuple[str, ...]:
    index = load_index(index_folder)
    _, rows = index.search(queries, 5)
    return tuple(index.products["id"].to_numpy()[rows].ravel())


def test_search_during_1000_rebuilds_sees_old_or_new_never_a_mix(tmp_path: Path) -> None:
    folder = tmp_path / "index"
    rebuild(str(folder), 2)
    queries = np.random.default_rng(7).standard_normal((4, DIM)).astype(np.float32)
    expected = set()
    for version in (0, 1):
        vectors, products = catalogue(version)
        _, rows = build_index(vectors).search(queries, 5)
        expected.add(tuple(products["id"].to_numpy()[rows].ravel()))
    writer = mp.get_context("spawn").Process(target=rebuild, args=(str(folder), 1000))
    writer.start()
    seen, wrong, errors = 0, 0, 0
    deadline = time.time() + 300
    while writer.is_alive() and time.time() < deadline:
        try:
            got = answers(folder, queries)
        except UserError:
            errors += 1  # a build removed under a slow reader: an error, never a wrong answer
            continue
        seen += 1
        wrong += got not in expected
    writer.join(timeout=60)
    print(f"searches during 1000 rebuilds: {seen} answered, {wrong} wrong, {errors} errors")
    assert writer.exitcode == 0
    assert seen > 50 and wrong == 0, (seen, wrong, errors)
    assert errors <= seen // 20
    assert len(list((tmp_path / ".index.builds").iterdir())) == 2  # the newest build and the one before


def hold_lock(path: str, seconds: float) -> None:
    with output_lock(Path(path)):
        time.sleep(seconds)


def test_a_second_job_on_the_same_output_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    out = tmp_path / "tags.jsonl"
    holder = mp.get_context("spawn").Process(target=hold_lock, args=(str(out), 20))
    holder.start()
    lock = tmp_path / ".tags.jsonl.lock"
    deadline = time.time() + 60
    while time.time() < deadline and not (lock.is_file() and lock.read_text().strip()):
        time.sleep(0.05)
    with pytest.raises(UserError, match=rf"being written by another job \(pid {holder.pid}\)"):
        with output_lock(out):
            pass
    holder.kill()  # kill -9: the OS releases the lock, no stale lock is left behind
    holder.join()
    with output_lock(out):
        pass
