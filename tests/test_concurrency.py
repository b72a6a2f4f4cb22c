"""Concurrent use of one output: searches during index rebuilds see the old or the new index, never a mix, and never
lose the build they resolved; two jobs on one output: the second is refused while the first runs."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from multimodal.errors import UserError
from multimodal.search.build import build_index
from multimodal.search.index import INFO_FILE, load_index, save_index
from multimodal.writers import output_lock

N, DIM = 300, 16
READERS, REBUILDS = 3, 1000


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


def expected_answers(queries: np.ndarray) -> dict[int, tuple[str, ...]]:
    """Each catalogue's top-5 ids for the queries, by exact search."""
    expected = {}
    for version in (0, 1):
        vectors, products = catalogue(version)
        _, rows = build_index(vectors).search(queries, 5)
        expected[version] = tuple(products["id"].to_numpy()[rows].ravel())
    return expected


def read_until(folder: str, queries: np.ndarray, expected: dict[int, tuple[str, ...]], ready: Any, stop: Any,
               out: Any) -> None:  # fmt: skip
    """A reader process, as `multimodal search` reads: load the index, search, then read one more file of the build
    it resolved (as the checkpoint is read after the index), until ``stop``. Puts (answers, wrong, errors, first)."""
    answered, wrong, errors, first = 0, 0, 0, ""
    while not stop.is_set():
        try:
            index = load_index(folder)
            _, rows = index.search(queries, 5)
            got = tuple(index.products["id"].to_numpy()[rows].ravel())
            version = json.loads((index.folder / INFO_FILE).read_text())["version"]
            index.close()
        except (UserError, OSError) as err:
            errors, first = errors + 1, first or str(err)
            continue
        answered += 1
        wrong += got != expected[version] or version != index.info["version"]
        ready.set()
    out.put((answered, wrong, errors, first))


def test_readers_during_1000_rebuilds_get_old_or_new_and_never_an_error(tmp_path: Path) -> None:
    """Three reader processes while another rebuilds the index 1,000 times: every answer is one catalogue's, from
    the build the reader resolved, and no reader loses its build (readers hold it; old builds are pruned later)."""
    folder = tmp_path / "index"
    rebuild(str(folder), 2)
    queries = np.random.default_rng(7).standard_normal((4, DIM)).astype(np.float32)
    expected = expected_answers(queries)
    ctx = mp.get_context("spawn")
    stop, out = ctx.Event(), ctx.Queue()
    ready = [ctx.Event() for _ in range(READERS)]
    readers = [ctx.Process(target=read_until, args=(str(folder), queries, expected, r, stop, out)) for r in ready]
    for reader in readers:
        reader.start()
    try:
        assert all(r.wait(120) for r in ready), "the readers did not start"
        start = time.perf_counter()
        writer = ctx.Process(target=rebuild, args=(str(folder), REBUILDS))
        writer.start()
        writer.join(timeout=240)
        seconds = time.perf_counter() - start
    finally:
        stop.set()
        results = [out.get(timeout=60) for _ in readers]
        for reader in readers:
            reader.join(timeout=30)
    answered, wrong, errors = (sum(r[i] for r in results) for i in range(3))
    print(f"{READERS} readers during {REBUILDS} rebuilds in {seconds:.1f} s: {answered} answers, {wrong} wrong, "
          f"{errors} errors")  # fmt: skip
    assert writer.exitcode == 0
    assert errors == 0, [r[3] for r in results if r[3]]
    assert wrong == 0 and answered > 100, results
    rebuild(str(folder), 1)  # nobody reads any more: the next save prunes every build but this one and the one before
    assert len(list((tmp_path / ".index.builds").iterdir())) == 2


def test_a_held_build_survives_rebuilds_and_is_pruned_once_released(tmp_path: Path) -> None:
    folder = tmp_path / "index"
    rebuild(str(folder), 2)
    held = load_index(folder)
    rebuild(str(folder), 5)
    assert held.folder.is_dir() and load_index(held.folder).count == N  # still whole: its reader holds it
    assert len(list((tmp_path / ".index.builds").iterdir())) == 3  # the held one, the newest and the one before
    held.close()
    rebuild(str(folder), 1)
    assert not held.folder.exists() and len(list((tmp_path / ".index.builds").iterdir())) == 2


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


def test_a_writer_killed_while_it_moves_an_old_folder_aside_leaves_it_readable(tmp_path: Path) -> None:
    """An index folder from before builds were kept is moved into the builds, then the first link is made: a kill
    between the two renames leaves neither; readers (and the next write) take the moved folder as the current one."""
    from multimodal.search.builds import MIGRATED, builds_of, hold
    from multimodal.search.index import INFO_FILE

    folder = tmp_path / "idx"
    folder.mkdir()
    (folder / INFO_FILE).write_text("{}")
    builds_of(folder).mkdir()
    os.replace(folder, builds_of(folder) / MIGRATED)  # the first rename, and no link: as a kill leaves it
    build, lock = hold(folder, INFO_FILE)
    assert build == (builds_of(folder) / MIGRATED).resolve() and (build / INFO_FILE).is_file()
    if lock is not None:
        lock.close()
