"""Training from a litdata stream (``multimodal prepare``, then ``fit --data.stream``): the same splits, records,
vocabularies, data report and weights as training from the manifest it was written from; a streaming fit killed with
SIGKILL and resumed ends with the weights of an uninterrupted one; a stream of another version or without the task's
columns, and an output folder that holds something else, are one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import ROOT, SAMPLE_IMAGES, fit_tiny
from test_resume import assert_killed_and_resumed_equals_uninterrupted, fit_args

from multimodal.cli import main
from multimodal.data.datamodule import ProductDataModule
from multimodal.errors import UserError

COLUMNS = {"text_columns": ["title"], "attributes": ["gender", "masterCategory", "season"]}  # the tiny tagger's


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory, sample_df: pd.DataFrame) -> tuple[Path, Path]:
    """60 sample products (one with a missing photo beside its found one) as a CSV manifest, and their stream."""
    root = tmp_path_factory.mktemp("litdata")
    df = sample_df.iloc[::13].head(60).drop(columns=["split"], errors="ignore").reset_index(drop=True)
    df.loc[5, "image"] = f"{df.image[5]}|gone.jpg"
    manifest, stream = root / "catalogue.csv", root / "stream"
    df.to_csv(manifest, index=False)
    main(["prepare", "--data.manifest", str(manifest), "--data.image_root", str(SAMPLE_IMAGES), "--out", str(stream)])
    return manifest, stream


def error_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err, err[-2000:]
    (line,) = [line for line in err.splitlines() if "error:" in line]
    return line


def test_a_stream_trains_as_its_manifest(tmp_path: Path, catalogue: tuple[Path, Path]) -> None:
    manifest, stream = catalogue
    dms = [ProductDataModule(str(manifest), image_root=str(SAMPLE_IMAGES), num_workers=0, **COLUMNS),
           ProductDataModule(stream=str(stream), num_workers=0, **COLUMNS)]  # fmt: skip
    records = [{s: [vars(r) for r in recs] for s, recs in dm.splits.items()} for dm in dms]
    assert records[0] == records[1] and min(len(v) for v in records[0].values()) > 0
    assert (dms[0].vocabularies, dms[0].tag_vocabularies) == (dms[1].vocabularies, dms[1].tag_vocabularies)
    reports = [json.dumps({k: v for k, v in dm.report().items() if k != "manifest"}) for dm in dms]
    assert reports[1].replace(f"{stream} row", f"{manifest} row") == reports[0] and "gone.jpg" in reports[0]
    absent = tmp_path / "absent.csv"  # the stream is read instead of the manifest: this one is never opened
    from_stream = fit_tiny("tagger", tmp_path / "stream", absent, SAMPLE_IMAGES, 2, "--data.stream", str(stream))
    ckpts = [fit_tiny("tagger", tmp_path / "manifest", manifest, SAMPLE_IMAGES), from_stream]
    weights = [torch.load(c, map_location="cpu", weights_only=True)["state_dict"] for c in ckpts]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.slow
def test_a_streaming_fit_killed_and_resumed_equals_an_uninterrupted_one(
    tmp_path: Path, catalogue: tuple[Path, Path]
) -> None:
    _, stream = catalogue

    def args(root: Path) -> list[str]:
        return [*fit_args(root, tmp_path / "absent.csv"), "--data.init_args.stream", str(stream)]

    assert_killed_and_resumed_equals_uninterrupted(tmp_path, args)


def test_a_stream_of_another_version_or_task_is_a_one_line_error(
    tmp_path: Path, catalogue: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    manifest, stream = catalogue
    header = json.loads((stream / "stream.json").read_text())
    # a copy of the header beside the same chunks: only the version differs
    (other := tmp_path / "other").mkdir()
    for part in ("rows", "photos"):
        (other / part).symlink_to(stream / part, target_is_directory=True)
    (other / "stream.json").write_text(json.dumps({**header, "version": 0}))
    line = error_line([*fit_args(tmp_path / "run", manifest), "--data.init_args.stream", str(other)], capsys)
    assert line == (f"error: stream {other} was written in stream format version 0; this version of multimodal "
                    f"reads version 1: run `multimodal prepare` again")  # fmt: skip
    with pytest.raises(UserError) as info:
        ProductDataModule(stream=str(stream), text_columns=["title"], attributes=["brand"], num_workers=0)
    assert str(info.value).startswith(f"stream {stream} was prepared from {manifest}, which has no column(s) ['brand']")
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match=f"stream {tmp_path}: no stream.json there"):
        ProductDataModule(stream=str(tmp_path), num_workers=0, **COLUMNS)


def test_prepare_refuses_an_output_that_holds_something_else(
    tmp_path: Path, catalogue: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    manifest, _ = catalogue
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("not a stream")
    line = error_line(["prepare", "--data.manifest", str(manifest), "--out", str(out)], capsys)
    assert line == f"error: --out {out} already holds files; `multimodal prepare` writes into a new or empty folder"
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "not a stream"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no partial stream left beside it


def test_prepare_help() -> None:
    done = subprocess.run([sys.executable, "-m", "multimodal.cli", "prepare", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0 and "--data.manifest" in done.stdout and "--out" in done.stdout


def test_the_documented_commands_run_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/streaming.md's command lines, as written, from a scratch folder that links the repository's examples/
    and configs/. The two-process DDP line is left out: it relaunches this process's command line (pytest)."""
    import shlex

    doc = (ROOT / "docs" / "streaming.md").read_text(encoding="utf-8")
    lines = [shlex.split(line)[1:] for line in doc.splitlines() if line.startswith("    multimodal ")]
    assert [c[0] for c in lines[:3]] == ["prepare", "fit", "fit"] and "ddp" in lines[2]
    monkeypatch.chdir(tmp_path)
    for name in ("examples", "configs"):
        (tmp_path / name).symlink_to(ROOT / name, target_is_directory=True)
    for command in [c for c in lines if "ddp" not in c]:
        main(command)
    header = json.loads((tmp_path / "runs" / "fashion-stream" / "stream.json").read_text())
    assert header["rows"] == len(pd.read_csv(ROOT / "examples" / "fashion-products" / "metadata.csv"))
    assert (tmp_path / "runs" / "tiny").is_dir()  # the tiny config's root: fit ran (it keeps no checkpoint)
