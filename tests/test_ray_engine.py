"""``multimodal predict / export / caption --engine ray``: the same job on a pool of Ray actors.

The outputs equal the Lightning engine's (labels and captions identical, scores and vectors within 1e-5, same rows
in the same order, the same per-row errors); an actor killed with SIGKILL mid-run and then the driver killed with
its local Ray still end, after the same command is run again, in every id once; an unreachable ``--ray_address`` is
a one-line error within seconds; options of the Lightning engine are refused.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, SAMPLE_IMAGES, run_cli

from multimodal.search.export import load_export

ray = pytest.importorskip("ray")
COMMANDS = {"tagger": "predict", "retriever": "export", "captioner": "caption"}


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray for the in-process commands (which use a Ray already started rather than their own)."""
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    yield
    ray.shutdown()


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_rows_close(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    """Same rows, keys and texts; numbers within 1e-5 (actors run torch on one thread)."""
    assert [r["id"] for r in got] == [r["id"] for r in want]
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        for key, value in w.items():
            if isinstance(value, float):
                assert abs(g[key] - value) < 1e-5, (key, g[key], value)
            elif key != "tags":  # tags: [label, probability] pairs
                assert g[key] == value, key


def job(task: str, checkpoint: Path, manifest: Path, images: Path, out: Path, *extra: str) -> list[str]:
    args = [COMMANDS[task], "--ckpt_path", checkpoint, "--data.manifest", manifest, "--image_root", images]
    return [str(a) for a in [*args, "--out", out, "--batch_size", 4, "--block_size", 4, "--no_progress", *extra]]


def block_workers() -> list[int]:
    """PIDs of this machine's Ray actors running :class:`multimodal.ray_worker.BlockWorker`."""
    pids = []
    for folder in glob.glob("/proc/[0-9]*"):
        try:
            cmdline = Path(folder, "cmdline").read_bytes()
        except OSError:
            continue
        if b"MapWorker(MapBatches(BlockWorker))" in cmdline and not cmdline.endswith(b".submit\0"):
            pids.append(int(Path(folder).name))
    return pids


def wait_for(condition: Any, proc: subprocess.Popen, seconds: float) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None and not condition():
        time.sleep(0.05)


@pytest.mark.timeout(300)
def test_killed_actor_then_killed_driver_still_give_every_id_once(
    trained: dict[str, Path], sample_df: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command runs in its own process group with its own local Ray; once two blocks are written one actor is
    SIGKILLed (Ray restarts it and retries its block), once ten are, the driver and its Ray are. The same command
    run again writes only the missing blocks; the output equals the Lightning engine's."""
    manifest = tmp_path / "catalogue.csv"
    sample_df.head(160).to_csv(manifest, index=False)  # 40 blocks of 4
    out, folder = tmp_path / "tags.jsonl", tmp_path / ".tags.jsonl.job"
    args = job("tagger", trained["tagger"], manifest, SAMPLE_IMAGES, out, "--engine", "ray", "--num_actors", "2")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "multimodal.cli", *args], cwd=ROOT, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for(lambda: len(list(folder.glob("block-*.jsonl"))) >= 2 and block_workers(), proc, 180)
        assert proc.poll() is None, "the job ended before an actor could be killed"
        os.kill(block_workers()[0], signal.SIGKILL)
        wait_for(lambda: len(list(folder.glob("block-*.jsonl"))) >= 10, proc, 120)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
        proc.wait()
    written = len(list(folder.glob("block-*.jsonl")))
    assert 10 <= written < 40 and not out.exists()
    summary = json.loads(run_cli(args, capsys).strip().splitlines()[-1])  # the same command, in this process
    assert summary["complete"] and summary["resumed_blocks"] >= written and summary["rows"] == 160
    lightning = tmp_path / "lightning.jsonl"
    run_cli(job("tagger", trained["tagger"], manifest, SAMPLE_IMAGES, lightning), capsys)
    got = rows(out)
    assert len({r["id"] for r in got}) == len(got) == 160
    assert_rows_close(got, rows(lightning))
    assert sorted(p.name for p in folder.iterdir()) == ["job.json"]  # no block, no half-written block left


def test_unreachable_address_and_lightning_options_are_one_line_errors(
    trained: dict[str, Path],
    job_input: tuple[Path, Path, list[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from multimodal.cli import main

    def error(args: list[str]) -> str:
        with pytest.raises(SystemExit):
            main(args)
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        return lines[0]

    manifest, images, _ = job_input
    base = job("tagger", trained["tagger"], manifest, images, tmp_path / "tags.jsonl", "--engine", "ray")
    started = time.time()
    assert "--ray_address 127.0.0.1:9: no Ray cluster answers there" in error([*base, "--ray_address", "127.0.0.1:9"])
    assert time.time() - started < 30  # the discard port: nothing listens
    assert "--num_actors instead of --devices" in error([*base, "--devices", "2", "--strategy", "ddp"])
    assert "--num_actors and --actor_cpus must be positive" in error([*base, "--num_actors", "0"])
    assert "--ray_address nowhere: give host:port" in error([*base, "--ray_address", "nowhere"])
    other = tmp_path / "other.jsonl"
    other.write_text("someone else's rows\n")
    message = error(job("tagger", trained["tagger"], manifest, images, other, "--engine", "ray"))
    assert "is not the output of this job: it is left untouched" in message
    assert other.read_text() == "someone else's rows\n"


@pytest.mark.timeout(300)
def test_the_documented_commands_equal_the_lightning_engine(
    local_ray: None,
    trained: dict[str, Path],
    job_input: tuple[Path, Path, list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """docs/distributed.md's command lines as written (the checkpoint names swapped for the tiny ones; catalog.csv:
    12 products, one photo unreadable, one id repeated; photos/: their photo folder), then the same with
    ``--engine lightning``: tags and captions identical, scores and vectors within 1e-5, the same rows in the same
    order with the same errors. Then the doc's Python block, as written."""
    import shlex

    doc = (ROOT / "docs" / "distributed.md").read_text(encoding="utf-8")
    block = doc.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [shlex.split(line)[1:] for line in block.splitlines() if line.startswith("multimodal ")]
    assert [c[0] for c in commands] == ["predict", "export", "caption"]
    assert all(c[c.index("--engine") + 1] == "ray" for c in commands)
    manifest, images, ids = job_input
    monkeypatch.chdir(tmp_path)
    Path("catalog.csv").write_bytes(manifest.read_bytes())
    Path("photos").symlink_to(images, target_is_directory=True)
    swap = {f"{task}.ckpt": str(path) for task, path in trained.items()}
    for command in commands:
        run_cli([swap.get(word, word) for word in command], capsys)
        lightning = {
            "ray": "lightning",
            "tags.jsonl": "l-tags.jsonl",
            "emb/": "l-emb/",
            "captions.jsonl": "l-cap.jsonl",
        }
        run_cli([lightning.get(word, swap.get(word, word)) for word in command], capsys)
    for ours, theirs in (("tags.jsonl", "l-tags.jsonl"), ("captions.jsonl", "l-cap.jsonl")):
        got = rows(Path(ours))
        assert_rows_close(got, rows(Path(theirs)))
        assert [r["id"] for r in got if "error" in r] == ["broken-photo", ids[0]]  # in input order
    (m1, v1, p1), (m2, v2, p2) = load_export("l-emb"), load_export("emb")
    assert p2["id"].tolist() == p1["id"].tolist() == [i for i in ids if i != "broken-photo"]
    np.testing.assert_allclose(v2, v1, atol=1e-5)
    assert m2["skipped"] == m1["skipped"] and m2["count"] == m1["count"]
    recipe = doc.split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict[str, Any] = {}
    exec(compile(recipe.replace('"tagger.ckpt"', repr(str(trained["tagger"]))), "docs/distributed.md", "exec"), scope)  # noqa: S102
    tags = scope["tags"]
    assert tags["row"].tolist() == list(range(len(ids) + 1))
    assert tags["id"].tolist() == [r["id"] for r in rows(Path("tags.jsonl"))]
