"""`multimodal caption`: streamed JSONL, per-item errors, resume after a kill without duplicates, DDP part merge."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from multimodal.caption_job import CaptionItem, folder_items, merge_parts, part_path, read_done, run_caption_job
from multimodal.cli import main
from multimodal.commands.caption import load_captioner
from multimodal.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TINY_CAPTION = ROOT / "configs" / "captioning" / "tiny.yaml"
SAMPLE = ROOT / "examples" / "fashion-products"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny captioner fitted for 2 steps by `multimodal fit`, so its checkpoint stores the config."""
    root = tmp_path_factory.mktemp("fit")
    main(["fit", "--config", str(TINY_CAPTION), "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0",
          "--trainer.enable_checkpointing", "true", "--trainer.default_root_dir", str(root)])  # fmt: skip
    (ckpt,) = list(root.rglob("*.ckpt"))
    return ckpt


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """10 real photos (one in a subfolder) and one corrupt file."""
    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    names = sorted(p.name for p in (SAMPLE / "images").iterdir())[:10]
    for name in names[:9]:
        shutil.copy(SAMPLE / "images" / name, folder / name)
    shutil.copy(SAMPLE / "images" / names[9], folder / "more" / names[9])
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return folder


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_folder_job_writes_one_line_per_image_and_errors_inline(checkpoint: Path, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "captions.jsonl"
    main(["caption", "--ckpt_path", str(checkpoint), "--input", str(photos), "--out", str(out), "--batch_size", "4",
          "--max_new_tokens", "5", "--no_progress"])  # fmt: skip
    lines = _lines(out)
    assert len(lines) == 11 and len({x["id"] for x in lines}) == 11
    (bad,) = [x for x in lines if "error" in x]
    assert bad["id"] == "broken" and "broken.jpg" in bad["error"] and "caption" not in bad
    good = [x for x in lines if "error" not in x]
    assert all(x["caption"] and isinstance(x["score"], float) for x in good)
    assert any(x["id"].startswith("more/") for x in good)


def test_killed_and_resumed_job_equals_uninterrupted(checkpoint: Path, photos: Path, tmp_path: Path) -> None:
    model, _ = load_captioner(checkpoint)
    options = {"max_new_tokens": 6, "num_beams": 2}
    full = tmp_path / "full.jsonl"
    total, items = folder_items(photos)
    run_caption_job(model, items, full, batch_size=3, generation=options, total=total, progress=False)

    def dies_after(n: int) -> Iterator[CaptionItem]:
        for i, item in enumerate(folder_items(photos)[1]):
            if i == n:
                raise KeyboardInterrupt  # the process is stopped between batches...
            yield item

    resumed = tmp_path / "resumed.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run_caption_job(model, dies_after(7), resumed, batch_size=3, generation=options, progress=False)
    assert len(_lines(resumed)) == 6
    with resumed.open("a") as f:
        f.write('{"id": "half-written line", "capt')  # ...or in the middle of a write
    summary = run_caption_job(model, folder_items(photos)[1], resumed, batch_size=3, generation=options, progress=False)
    assert summary.resumed == 6 and summary.written == 5
    got, want = _lines(resumed), _lines(full)
    assert [x["id"] for x in got] == [x["id"] for x in want]  # each id once, input order
    for a, b in zip(got, want, strict=True):
        assert a.get("caption") == b.get("caption") and a.get("error") == b.get("error")
        assert a.get("score", 0.0) == pytest.approx(b.get("score", 0.0), abs=1e-4)


def test_sigkilled_cli_job_resumes_without_duplicates(checkpoint: Path, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed.jsonl"
    cmd = [sys.executable, "-m", "multimodal.cli", "caption", "--ckpt_path", str(checkpoint), "--input", str(photos),
           "--out", str(out), "--batch_size", "1", "--max_new_tokens", "20", "--no_progress"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while (
        time.time() < deadline and proc.poll() is None and (not out.exists() or len(out.read_bytes().splitlines()) < 2)
    ):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = len(read_done(out))
    assert 0 < before
    main(cmd[3:] + [])
    ids = [x["id"] for x in _lines(out)]
    assert len(ids) == 11 and len(set(ids)) == 11


def test_manifest_input_with_prompt_columns_and_missing_images(checkpoint: Path, tmp_path: Path) -> None:
    df = pd.read_csv(SAMPLE / "metadata.csv", dtype=str, keep_default_na=False).head(5)
    df.loc[1, "image"] = "nowhere.jpg"
    df.loc[2, "image"] = ""
    df.loc[3, "id"] = df.loc[0, "id"]  # duplicate id: captioned once
    manifest = tmp_path / "catalog.jsonl"
    df.to_json(manifest, orient="records", lines=True)
    out = tmp_path / "out.jsonl"
    main(["caption", "--ckpt_path", str(checkpoint), "--input", str(manifest), "--image_root", str(SAMPLE / "images"),
          "--out", str(out), "--max_new_tokens", "4", "--prompt", "describe", "--do_sample", "--top_k", "5",
          "--seed", "3", "--no_progress"])  # fmt: skip
    lines = _lines(out)
    assert [x["id"] for x in lines] == [df.loc[i, "id"] for i in (0, 1, 2, 4)]
    assert "not found" in lines[1]["error"] and "no usable image" in lines[2]["error"]


def test_merge_parts_keeps_each_id_once(tmp_path: Path) -> None:
    out = tmp_path / "c.jsonl"
    out.write_text('{"id": "a", "caption": "x"}\n')
    part_path(out, 0).write_text('{"id": "a", "caption": "x"}\n{"id": "b", "caption": "y"}\n')
    part_path(out, 1).write_text('{"id": "c", "caption": "z"}\n{"id": "d", "cap')
    merge_parts(out)
    assert [x["id"] for x in _lines(out)] == ["a", "b", "c"]
    assert not part_path(out, 0).exists() and not part_path(out, 1).exists()


def test_parts_of_a_killed_multiprocess_run_are_merged_before_a_resume(
    checkpoint: Path, photos: Path, tmp_path: Path
) -> None:
    """A 3-process run killed mid-way, resumed with one process: nothing lost, nothing twice, no part left."""
    job = ["caption", "--ckpt_path", str(checkpoint), "--input", str(photos), "--batch_size", "4",
           "--max_new_tokens", "5", "--no_progress"]  # fmt: skip
    full = tmp_path / "full.jsonl"
    main([*job, "--out", str(full)])
    lines = _lines(full)
    out = tmp_path / "resumed.jsonl"
    kept = {0: lines[0:2], 2: lines[5:6]}  # rank 1 wrote nothing; rank 2's last line was cut short
    for rank, rows in kept.items():
        text = "".join(json.dumps(x) + "\n" for x in rows)
        part_path(out, rank).write_text(text + ('{"id": "cut' if rank == 2 else ""))
    main([*job, "--out", str(out)])
    got = _lines(out)
    assert sorted(x["id"] for x in got) == sorted(x["id"] for x in lines)  # every id exactly once
    assert [x["id"] for x in got[:3]] == [x["id"] for x in lines[0:2] + lines[5:6]]  # the parts' lines kept
    assert not list(tmp_path.glob("resumed.part*"))
    want = {x["id"]: x for x in lines}
    assert all(x.get("caption") == want[x["id"]].get("caption") for x in got)


@pytest.mark.slow
def test_ddp_job_writes_each_id_once_and_matches_one_process(checkpoint: Path, photos: Path, tmp_path: Path) -> None:
    """2 CPU processes: rank R captions items R, R + 2, ... into its part; rank 0 merges both parts at the end."""
    job = ["caption", "--ckpt_path", str(checkpoint), "--input", str(photos), "--batch_size", "2",
           "--num_beams", "1", "--max_new_tokens", "6", "--no_progress"]  # fmt: skip
    single = tmp_path / "single.jsonl"
    main([*job, "--out", str(single)])
    out = tmp_path / "ddp.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "multimodal.cli", *job, "--out", str(out), "--accelerator", "cpu", "--devices", "2"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-4000:]}"
    # The summary line is looked for anywhere in a line: another rank's output may land on the same stdout line.
    decode = json.JSONDecoder().raw_decode
    summaries = [decode(line[line.index('{"out"') :])[0] for line in proc.stdout.splitlines() if '{"out"' in line]
    assert len(summaries) == 1, f"stdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-4000:]}"  # rank 0 only
    (summary,) = summaries
    assert summary == {"out": str(out), "written": 11, "errors": 1, "resumed": 0, "duplicates": 0}  # both ranks
    ids = [item.id for item in folder_items(photos)[1]]
    got = _lines(out)
    assert [x["id"] for x in got] == ids[0::2] + ids[1::2]  # each id once: rank 0's part, then rank 1's (uneven)
    assert not part_path(out, 0).exists() and not part_path(out, 1).exists()
    want = {x["id"]: x for x in _lines(single)}
    assert sorted(want) == sorted(ids)
    for line in got:  # greedy decoding: the same caption whatever process and batch an image landed in
        ref = want[line["id"]]
        assert line.get("caption") == ref.get("caption") and line.get("error") == ref.get("error"), line["id"]
        assert line.get("score", 0.0) == pytest.approx(ref.get("score", 0.0), abs=1e-4)
    assert all(x["caption"] for x in got if "error" not in x)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max_new_tokens", "0"], "max_new_tokens must be positive"),
        (["--batch_size", "0"], "batch_size must be positive"),
    ],
)
def test_bad_arguments(checkpoint: Path, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                       args: list[str], message: str) -> None:  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "caption",
                "--ckpt_path",
                str(checkpoint),
                "--input",
                str(photos),
                "--out",
                str(tmp_path / "o.jsonl"),
                *args,
            ]
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err


def test_empty_folder_and_foreign_checkpoint(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no image files"):
        folder_items(tmp_path / "empty")
    tagger = tmp_path / "tagger.ckpt"
    config = {"model": {"class_path": "multimodal.tasks.tagging.ProductTagger", "init_args": {}}}
    torch.save({"multimodal_config": yaml.safe_dump(config), "state_dict": {}}, tagger)
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "caption",
                "--ckpt_path",
                str(tagger),
                "--input",
                str(tmp_path / "empty"),
                "--out",
                str(tmp_path / "o.jsonl"),
            ]
        )
    assert exc.value.code == 2
    assert "ProductTagger checkpoint, not a captioner" in capsys.readouterr().err
