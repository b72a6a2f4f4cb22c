"""An ONNX export is checked when it loads (file hashes, label counts against the graphs' own output widths),
and ``--runtime onnx`` keeps one export per checkpoint and precision: it runs the folder ``export-model`` made,
or exports once into the cache and reuses that. One real export of the tiny tagger serves every test."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLE_IMAGES, SAMPLE_MANIFEST, cli_error

import multimodal
from multimodal.errors import UserError
from multimodal.loading import file_sha256
from multimodal.onnx import cache


@pytest.fixture(scope="module", autouse=True)
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``--runtime onnx`` exports into this cache, not the user's."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("cache")
    mp.setenv("MULTIMODAL_CACHE", str(root))
    yield root / "onnx"
    mp.undo()


def _cli(args: list[Any]) -> str:
    """Run a command in this process; returns what it wrote on stderr."""
    from multimodal import cli

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        cli.main([str(a) for a in args])
    return err.getvalue()


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "new.csv"
    path.write_text("".join(SAMPLE_MANIFEST.read_text().splitlines(keepends=True)[:9]))  # 8 products
    return path


@pytest.fixture(scope="module")
def flow(trained: dict[str, Path], manifest: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``predict --runtime onnx`` twice on the tagger checkpoint, then ``export-model`` to a folder, then
    ``predict --runtime onnx`` again: what each step said and left in the cache, and the predictions."""
    root, steps = tmp_path_factory.mktemp("flow"), {}
    ckpt = trained["tagger"]
    for step in ("first", "second", "export-model", "after"):
        if step == "export-model":
            stderr = _cli(["export-model", "--ckpt_path", ckpt, "--out", root / "model_onnx"])
        else:
            stderr = _cli([*_predict(ckpt, manifest, root / f"{step}.jsonl"), "--runtime", "onnx"])
        listing = {p.name: p.stat().st_mtime_ns for p in cache_dir.rglob("*")}
        steps[step] = {"stderr": stderr, "cache": listing, "out": root / f"{step}.jsonl"}
    return {
        "steps": steps,
        "export": root / "model_onnx",
        "checkpoint": ckpt,
        "own": cache_dir / file_sha256(ckpt)[:20],
    }


@pytest.fixture
def export(flow: dict, tmp_path: Path) -> Path:
    """A copy of the export-model folder, for a test to change."""
    shutil.copytree(flow["export"], tmp_path / "model_onnx")
    return tmp_path / "model_onnx"


def _edit(folder: Path, change: Any) -> dict:
    info = json.loads((folder / "model.json").read_text())
    change(info)
    (folder / "model.json").write_text(json.dumps(info))
    return info


def _predict(folder: Path, manifest: Path, out: Path, *extra: Any) -> list[Any]:
    return ["predict", "--ckpt_path", folder, "--data.manifest", manifest, "--data.image_root", SAMPLE_IMAGES,
            "--out", out, "--no_progress", *extra]  # fmt: skip


# ------------------------------------------------------------------------------------- one export, reused
def test_runtime_onnx_exports_once_then_runs_the_export_model_folder(flow: dict) -> None:
    steps, own, folder = flow["steps"], flow["own"], flow["export"]
    first, second, made, after = (steps[k] for k in ("first", "second", "export-model", "after"))
    assert first["stderr"].count("--runtime onnx: exporting") == 1
    assert f"to ONNX in {own} (no fp32 export of this checkpoint yet)" in first["stderr"]
    assert {own.name, "tagger.onnx", "model.json"} <= set(first["cache"])
    # the second run: the cache's export, untouched, and nothing exported
    assert "exporting" not in second["stderr"]
    assert f"--runtime onnx: using the cached ONNX export {own} of" in second["stderr"]
    assert second["cache"] == first["cache"]
    # export-model takes the cache's export (same checkpoint and options) instead of exporting a second copy
    assert f"moved the cached ONNX export of {flow['checkpoint']} from {own} to {folder}" in made["stderr"]
    assert set(made["cache"]) == {f"{own.name}.json"}
    assert json.loads((own.parent / f"{own.name}.json").read_text())["folder"] == str(folder.resolve())
    # then --runtime onnx runs that folder: no new folder in the cache, and the message names it
    assert f"--runtime onnx: using the ONNX export {folder.resolve()} of" in after["stderr"]
    assert "exporting" not in after["stderr"] and after["cache"] == made["cache"]
    rows = [s["out"].read_text() for s in (first, second, after)]
    assert rows[0] == rows[1] == rows[2] and len(rows[0].splitlines()) == 8


def test_int8_is_quantized_from_the_fp32_export_and_holds_no_fp32_copy(
    flow: dict, export: Path, manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MULTIMODAL_CACHE", str(tmp_path / "cache"))
    info = json.loads((export / "model.json").read_text())
    cache.record(export, info)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        folder = cache.export_for(flow["checkpoint"], int8=True)
        assert cache.export_for(flow["checkpoint"], int8=True) == folder
    assert f"quantizing the ONNX export {export.resolve()}" in err.getvalue()
    assert "using the cached ONNX export" in err.getvalue().splitlines()[1]
    assert sorted(p.name for p in folder.glob("*.onnx")) == [f"{g}.int8.onnx" for g in sorted(info["graphs"])]
    rows = pd.read_csv(manifest, dtype=str).assign(image=lambda d: [str(SAMPLE_IMAGES / n) for n in d["image"]])
    probs = multimodal.load(flow["checkpoint"], runtime="onnx-int8").predict_proba(rows)["gender"]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    with pytest.raises(UserError, match="int8 graphs only: run it with --runtime onnx-int8"):
        multimodal.load(folder)


def test_a_changed_recorded_export_is_not_run(
    flow: dict, export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MULTIMODAL_CACHE", str(tmp_path / "cache"))
    cache.record(export, json.loads((export / "model.json").read_text()))
    (export / "tagger_text.onnx").write_bytes((export / "tagger_text.onnx").read_bytes()[:-1])
    folder, why = cache._find(file_sha256(flow["checkpoint"]), int8=False)
    assert folder is None and "tagger_text.onnx was changed since the export" in why
    assert not list((tmp_path / "cache" / "onnx").glob("*.json"))  # the pointer is dropped, the folder kept
    assert (export / "tagger_text.onnx").is_file()


# ------------------------------------------------------------------------------------ what loading refuses
@pytest.mark.parametrize("top_k", [1, 5])
def test_a_label_removed_from_model_json_is_one_line(
    export: Path, manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], top_k: int
) -> None:
    info = _edit(export, lambda i: i["settings"]["vocabularies"]["gender"].pop())
    n = len(info["settings"]["vocabularies"]["gender"])
    err = cli_error(_predict(export, manifest, tmp_path / "tags.jsonl", "--top_k", top_k), capsys)
    assert err == f"error: {export / 'model.json'} does not match tagger.onnx: labels for gender: {n}, " + (
        f"graph outputs: {n + 1}"
    )
    assert not (tmp_path / "tags.jsonl").exists()


def test_labels_are_checked_against_the_graph_itself(flow: dict, export: Path) -> None:
    """model.json edited consistently (a label and the widths it recorded): the graph's own outputs refuse it."""

    def drop_label(info: dict) -> None:
        info["settings"]["vocabularies"]["gender"].pop()
        for graph in info["graphs"].values():
            graph["widths"]["gender"] -= 1

    info = _edit(export, drop_label)
    n = len(info["settings"]["vocabularies"]["gender"])
    with pytest.raises(UserError, match=rf"match tagger\.onnx: labels for gender: {n}, graph outputs: {n + 1}$"):
        multimodal.load(export)
    # an attribute the graphs do not output at all
    shutil.rmtree(export)
    shutil.copytree(flow["export"], export)
    _edit(export, lambda i: i["settings"]["vocabularies"].update(colour=["Blue", "Red"]))
    with pytest.raises(UserError, match=r"match tagger\.onnx: labels for colour: 2, graph outputs: none$"):
        multimodal.load(export)


@pytest.mark.parametrize("damage", ["byte", "truncated", "missing"])
def test_a_changed_file_is_one_line_naming_it(
    export: Path, manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    if damage == "byte":
        path = export / "tagger.onnx"
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 1
        path.write_bytes(bytes(data))
    elif damage == "truncated":
        path = export / "tagger_image.onnx"
        path.write_bytes(path.read_bytes()[:1000])
    else:
        path = export / "tokenizer" / "tokenizer.json"
        path.unlink()
    err = cli_error(_predict(export, manifest, tmp_path / "tags.jsonl"), capsys)
    expected = "is missing" if damage == "missing" else "was changed since the export"
    assert err.startswith(f"error: {path} {expected}")


def test_an_export_without_hashes_still_loads_and_is_checked_against_its_graphs(
    flow: dict, export: Path, manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def older(info: dict) -> None:  # model.json as exports wrote it before hashes and widths were recorded
        del info["files"]
        for graph in info["graphs"].values():
            del graph["widths"]

    _edit(export, older)
    _cli(_predict(export, manifest, tmp_path / "old.jsonl"))
    assert (tmp_path / "old.jsonl").read_text() == flow["steps"]["first"]["out"].read_text()
    info = _edit(export, lambda i: i["settings"]["vocabularies"]["season"].pop())
    n = len(info["settings"]["vocabularies"]["season"])
    err = cli_error(_predict(export, manifest, tmp_path / "x.jsonl", "--top_k", "5"), capsys)
    assert err.endswith(f"does not match tagger.onnx: labels for season: {n}, graph outputs: {n + 1}")
    _edit(export, lambda i: i["settings"]["vocabularies"]["season"].append("Winter"))
    (export / "tagger.onnx").write_bytes((export / "tagger.onnx").read_bytes()[:1000])
    err = cli_error(_predict(export, manifest, tmp_path / "x.jsonl"), capsys)
    assert err.startswith(f"error: {export / 'tagger.onnx'} cannot be read as an ONNX graph (")
