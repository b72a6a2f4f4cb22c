"""The one batch-prediction path (`multimodal predict` for every task, `export`, `caption`): input order, per-row
errors, exactly-once resume after a stop or a kill -9, 2-process DDP equal to one process, outputs never
overwritten."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, kill_9_after_blocks

from multimodal.cli import main
from multimodal.search.export import load_export

TASKS = ("tagger", "retriever", "captioner")


def predict_args(ckpt: Path, manifest: Path, images: Path, out: Path, *extra: str) -> list[str]:
    return ["predict", "--ckpt_path", str(ckpt), "--data.manifest", str(manifest), "--data.image_root", str(images),
            "--out", str(out), "--batch_size", "2", "--block_size", "4", "--no_progress", *extra]  # fmt: skip


def out_path(tmp_path: Path, task: str, name: str) -> Path:
    return tmp_path / (name if task == "retriever" else f"{name}.jsonl")


def output(task: str, out: Path) -> list[dict]:
    """The rows of a job's output; for vectors, the products table with each vector as a list."""
    if task != "retriever":
        return [json.loads(line) for line in out.read_text().splitlines()]
    manifest, vectors, products = load_export(out)
    rows = products.to_dict("records")
    for row, vector in zip(rows, vectors, strict=True):
        row["vector"] = vector.tolist()
    return rows + [{"id": s["id"], "error": s["reason"]} for s in manifest["skipped"]]


def by_id(rows: list[dict]) -> dict[str, dict]:
    return {r["id"]: r for r in rows}


@pytest.mark.parametrize("task", TASKS)
def test_predict_writes_each_input_once_in_order_with_row_errors(
    task: str, trained: dict[str, Path], job_input: tuple[Path, Path, list[str]], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    manifest, images, ids = job_input
    out = out_path(tmp_path, task, "out")
    main(predict_args(trained[task], manifest, images, out))
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["complete"]
    rows = output(task, out)
    if task == "retriever":  # vectors are stored for readable products; the unreadable one is listed as skipped
        assert [r["id"] for r in rows] == [i for i in ids if i != "broken-photo"] + ["broken-photo", ids[0]]
        assert all(len(r["vector"]) == 32 for r in rows[:-2])
    else:
        assert [r["id"] for r in rows] == [*ids, ids[0]]  # input order, one line per input row
    bad, repeated = [r for r in rows if "error" in r]
    assert bad["id"] == "broken-photo" and "broken.jpg" in bad["error"]
    assert repeated["id"] == ids[0] and repeated["error"].endswith(f"duplicate id '{ids[0]}' (first at row 0)")
    good = [r for r in rows if "error" not in r]
    if task == "tagger":
        assert all(r["gender"] and 0 < r["gender_score"] <= 1 for r in good)
    if task == "captioner":
        assert all(isinstance(r["caption"], str) and r["image"] for r in good)
    main(predict_args(trained[task], manifest, images, out))  # the same job again: nothing to do
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["already_complete"]


@pytest.mark.parametrize("task", TASKS)
def test_stopped_and_resumed_job_equals_uninterrupted(
    task: str, trained: dict[str, Path], job_input: tuple[Path, Path, list[str]], tmp_path: Path
) -> None:
    manifest, images, _ = job_input
    full, resumed = out_path(tmp_path, task, "full"), out_path(tmp_path, task, "resumed")
    main(predict_args(trained[task], manifest, images, full))
    main(predict_args(trained[task], manifest, images, resumed, "--limit_batches", "3"))  # stops inside block 1
    assert not (resumed.is_file() if task != "retriever" else (resumed / "products.parquet").exists())
    job = resumed / "job.json" if task == "retriever" else resumed.parent / f".{resumed.name}.job" / "job.json"
    assert job.is_file()
    (job.parent / ".block-000001.jsonl.123.tmp").write_text('{"id": "half')  # a write cut short by a kill
    main(predict_args(trained[task], manifest, images, resumed))
    got, want = output(task, resumed), output(task, full)
    assert [r["id"] for r in got] == [r["id"] for r in want]  # 0 lost, 0 duplicated, same order
    if task == "retriever":
        np.testing.assert_array_equal([r["vector"] for r in got[:-2]], [r["vector"] for r in want[:-2]])
    else:
        assert resumed.read_text() == full.read_text()


def test_kill_9_tagging_job_resumes_exactly_once(
    trained: dict[str, Path], job_input: tuple[Path, Path, list[str]], tmp_path: Path
) -> None:
    first, images, _ = job_input
    df = pd.read_csv(first, dtype=str).head(3)
    df = pd.concat([df.assign(id=df["id"] + f"-{n}") for n in range(30)], ignore_index=True)  # 90 products
    manifest, ids = tmp_path / "many.csv", df["id"].tolist()
    df.to_csv(manifest, index=False)
    full, killed = tmp_path / "full.jsonl", tmp_path / "killed.jsonl"
    args = predict_args(trained["tagger"], manifest, images, killed)
    args[args.index("--batch_size") + 1], args[args.index("--block_size") + 1] = "1", "1"
    done = kill_9_after_blocks(args, tmp_path / ".killed.jsonl.job")
    assert 2 <= done < len(ids) and not killed.exists()
    main(args)
    main([a if a != str(killed) else str(full) for a in args])
    assert killed.read_text() == full.read_text()
    assert [json.loads(line)["id"] for line in killed.read_text().splitlines()] == ids


@pytest.mark.parametrize("command", ["predict", "caption"])
def test_an_out_that_is_not_the_jobs_own_is_refused_and_untouched(
    command: str, trained: dict[str, Path], job_input: tuple[Path, Path, list[str]], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    manifest, images, _ = job_input
    task = "tagger" if command == "predict" else "captioner"
    mine = tmp_path / "my_catalogue.jsonl"
    mine.write_bytes(b'{"id": "1", "title": "mine"}\nnot json\n')
    args = predict_args(trained[task], manifest, images, mine)
    args[0] = command
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert "is not the output of this job" in capsys.readouterr().err
    assert mine.read_bytes() == b'{"id": "1", "title": "mine"}\nnot json\n'
    out = tmp_path / "tags.jsonl"  # a finished job's output, asked for with other options: refused too
    main(predict_args(trained["tagger"], manifest, images, out))
    before = out.read_bytes()
    with pytest.raises(SystemExit):
        main(predict_args(trained["tagger"], manifest, images, out, "--top_k", "2"))
    assert "top_k" in capsys.readouterr().err and out.read_bytes() == before


def test_csv_output_and_other_tasks_commands(
    trained: dict[str, Path], job_input: tuple[Path, Path, list[str]], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    manifest, images, ids = job_input
    out = tmp_path / "tags.csv"
    main(predict_args(trained["tagger"], manifest, images, out))
    df = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert df["id"].tolist() == [*ids, ids[0]] and list(df.columns[:3]) == ["id", "gender", "gender_score"]
    assert df.loc[df["id"] == "broken-photo", "error"].str.contains("broken.jpg").all()
    args = predict_args(trained["tagger"], manifest, images, tmp_path / "c.jsonl")
    args[0] = "caption"
    with pytest.raises(SystemExit):
        main(args)
    assert "ProductTagger checkpoint, not a ProductCaptioner" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_two_process_ddp_equals_one_process(
    task: str, trained: dict[str, Path], job_input: tuple[Path, Path, list[str]], tmp_path: Path
) -> None:
    manifest, images, _ = job_input
    single, ddp = out_path(tmp_path, task, "single"), out_path(tmp_path, task, "ddp")
    main(predict_args(trained[task], manifest, images, single))
    cmd = [sys.executable, "-m", "multimodal.cli", *predict_args(trained[task], manifest, images, ddp),
           "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-4000:]}"
    got, want = output(task, ddp), output(task, single)
    assert [r["id"] for r in got] == [r["id"] for r in want]  # every id once, input order
    if task == "retriever":
        np.testing.assert_allclose([r["vector"] for r in got[:-2]], [r["vector"] for r in want[:-2]], atol=1e-3)
    else:
        for a, b in zip(got, want, strict=True):
            assert {k: v for k, v in a.items() if "score" not in k} == {k: v for k, v in b.items() if "score" not in k}
