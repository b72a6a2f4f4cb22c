"""The Python API (`multimodal.load`) of each task, and loading a checkpoint alone in a fresh process: no config,
no manifest, no training catalogue (the `trained` checkpoints' catalogue is deleted once they are fitted)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

import multimodal
from multimodal.cli import main
from multimodal.errors import UserError
from multimodal.search.export import load_export


def api_frame(manifest: Path, images: Path) -> pd.DataFrame:
    """The job input as a DataFrame with absolute image paths (the API takes paths as given), duplicate removed."""
    df = pd.read_csv(manifest, dtype=str, keep_default_na=False).drop_duplicates("id")
    df["image"] = [str(images / name) for name in df["image"]]
    return df.reset_index(drop=True)


def cli_rows(ckpt: Path, manifest: Path, images: Path, out: Path, *extra: str) -> list[dict]:
    main(["predict", "--ckpt_path", str(ckpt), "--data.manifest", str(manifest), "--data.image_root", str(images),
          "--out", str(out), "--no_progress", *extra])  # fmt: skip
    return [json.loads(line) for line in out.read_text().splitlines()]


def records(df: pd.DataFrame) -> list[dict]:
    """DataFrame rows as dicts without the NaN cells pandas adds for missing keys."""
    rows = df.to_dict("records")
    return [{k: v for k, v in row.items() if not (isinstance(v, float) and np.isnan(v))} for row in rows]


def test_tagger_api(trained: dict[str, Path], job_input: tuple[Path, Path, list[str]], tmp_path: Path) -> None:
    manifest, images, ids = job_input
    tagger = multimodal.load(trained["tagger"])
    assert type(tagger).__name__ == "Tagger" and set(tagger.classes) == {"gender", "masterCategory", "season"}
    df = api_frame(manifest, images)
    out = tagger.predict(df, top_k=2)
    assert out["id"].tolist() == ids and "error" in out.columns
    cli = cli_rows(trained["tagger"], manifest, images, tmp_path / "t.jsonl", "--top_k", "2")
    assert records(out) == cli[:-1] and "duplicate id" in cli[-1]["error"]  # the CLI's line for the repeated id
    probs = tagger.predict_proba(df)
    for name, vocab in tagger.classes.items():
        table = probs[name]
        assert list(table.columns) == vocab and table.index.tolist() == ids
        readable = table.drop(index="broken-photo")
        np.testing.assert_allclose(readable.sum(axis=1), 1.0, atol=1e-5)
        assert table.loc["broken-photo"].isna().all()
        best = readable.idxmax(axis=1)
        assert best.tolist() == out.set_index("id").loc[readable.index, name].tolist()
    # a list of dicts, and images alone (path or PIL, text unknown): the same answers
    assert records(tagger.predict(df.to_dict("records"))) == records(tagger.predict(df))
    path = df["image"][0]
    with Image.open(path) as img:
        by_path, by_pil = tagger.predict([path]), tagger.predict([img.copy()])
    assert by_path.drop(columns="id").to_dict("records") == by_pil.drop(columns="id").to_dict("records")
    assert tagger.extract_embedding(df.head(3)).shape == (3, 32)


def test_retriever_api(trained: dict[str, Path], job_input: tuple[Path, Path, list[str]], tmp_path: Path) -> None:
    manifest, images, ids = job_input
    retriever = multimodal.load(trained["retriever"], batch_size=3)
    df = api_frame(manifest, images)
    readable = df[df["id"] != "broken-photo"]
    with Image.open(readable["image"].iloc[0]) as img:
        v = retriever.embed_images([readable["image"].iloc[0], img.copy(), *readable["image"].iloc[1:4]])
    assert v.shape == (5, 32) and v.dtype == np.float32
    np.testing.assert_allclose(v[0], v[1], atol=1e-6)  # path and PIL image: the same vector
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    q = retriever.encode_text(["black leather watch", "red cotton shirt"])
    assert q.shape == (2, 32) and (q @ v.T).shape == (2, 5)
    products = retriever.extract_embedding(df)
    assert np.isnan(products[df.index[df["id"] == "broken-photo"][0]]).all()
    main(["export", "--ckpt_path", str(trained["retriever"]), "--data.manifest", str(manifest), "--data.image_root",
          str(images), "--out", str(tmp_path / "emb"), "--no_progress", "--dtype", "float32"])  # fmt: skip
    _, exported, table = load_export(tmp_path / "emb")
    assert table["id"].tolist() == readable["id"].tolist()
    np.testing.assert_allclose(products[readable.index], exported, atol=1e-6)
    with pytest.raises(UserError, match="broken.jpg"):
        retriever.embed_images([str(images / "broken.jpg")])


def test_captioner_api(trained: dict[str, Path], job_input: tuple[Path, Path, list[str]], tmp_path: Path) -> None:
    manifest, images, ids = job_input
    captioner = multimodal.load(trained["captioner"])
    df = api_frame(manifest, images)
    out = captioner.caption(df, max_new_tokens=5, num_beams=2)
    assert out["id"].tolist() == ids and out["caption"].notna().sum() == len(ids) - 1
    cli = cli_rows(trained["captioner"], manifest, images, tmp_path / "c.jsonl", "--max_new_tokens", "5",
                   "--num_beams", "2")[:-1]  # fmt: skip
    api = records(out)
    assert [{k: v for k, v in r.items() if k not in ("image", "score")} for r in cli] == [
        {k: v for k, v in r.items() if k != "score"} for r in api
    ]
    # Scores agree to rounding: a batch's row layout can move a log-softmax sum by 1e-7 (seen with trimmed logits).
    assert [r.get("score") for r in cli] == pytest.approx([r.get("score") for r in api], abs=1e-5)
    path = df["image"][0]
    with Image.open(path) as img:
        both = captioner.caption([path, img.copy()], prompt="describe", max_new_tokens=4)
    assert both["caption"][0] == both["caption"][1]
    with pytest.raises(UserError, match="num_return_sequences"):
        captioner.caption([path], num_return_sequences=2)


def test_bad_inputs_are_one_line_errors(
    trained: dict[str, Path], job_input: tuple[Path, Path, list[str]], tmp_path: Path
) -> None:
    from multimodal.captioning.predictor import Captioner
    from multimodal.tagging.predictor import Tagger

    manifest, images, _ = job_input
    with pytest.raises(UserError, match="ProductRetriever checkpoint, not a ProductTagger"):
        Tagger.load(trained["retriever"])
    with pytest.raises(UserError, match="ProductTagger checkpoint, not a ProductCaptioner"):
        Captioner.load(trained["tagger"])
    tagger = multimodal.load(trained["tagger"])
    with pytest.raises(UserError, match=r"missing column\(s\) \['title'\]"):
        tagger.predict(api_frame(manifest, images).drop(columns="title"))
    with pytest.raises(UserError, match="empty"):
        tagger.predict([])
    with pytest.raises(UserError, match="duplicate id"):
        tagger.predict(pd.read_csv(manifest, dtype=str))
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "arguments": argparse.Namespace(lr=1.0)}, foreign)  # not loadable safely
    with pytest.raises(UserError, match="not a checkpoint of this project"):
        multimodal.load(foreign)
    no_config = tmp_path / "no_config.ckpt"
    torch.save({"state_dict": {}}, no_config)
    with pytest.raises(UserError, match="no stored config"):
        multimodal.load(no_config)


def test_checkpoint_of_the_previous_layout_loads(trained: dict[str, Path], tmp_path: Path) -> None:
    """Checkpoints written before the package was laid out by job name `multimodal.tasks.<task>` classes."""
    state = torch.load(trained["tagger"], map_location="cpu", weights_only=True)
    config = yaml.safe_load(state["multimodal_config"])
    config["model"]["class_path"] = "multimodal.tasks.tagging.ProductTagger"
    config["data"]["class_path"] = "multimodal.datamodule.ProductDataModule"
    state["multimodal_config"] = yaml.safe_dump(config)
    old = tmp_path / "old.ckpt"
    torch.save(state, old)
    assert type(multimodal.load(old).model).__name__ == "ProductTagger"


@pytest.mark.slow
def test_fresh_process_without_config_or_catalogue_reproduces_predict(
    trained: dict[str, Path], job_input: tuple[Path, Path, list[str]], tmp_path: Path
) -> None:
    """Each task's checkpoint, in a new process started in an empty folder (no configs/, no training catalogue):
    `multimodal predict` there writes exactly what it wrote here, and the Python API agrees with it."""
    manifest, images, _ = job_input
    here = tmp_path / "here"
    here.mkdir()
    for task, ckpt in trained.items():
        out = here / ("emb" if task == "retriever" else f"{task}.jsonl")
        main(["predict", "--ckpt_path", str(ckpt), "--data.manifest", str(manifest), "--data.image_root", str(images),
              "--out", str(out), "--no_progress"])  # fmt: skip
    there = tmp_path / "fresh"
    there.mkdir()
    script = textwrap.dedent(
        f"""
        import json, sys
        import multimodal
        from multimodal.cli import main
        trained = {json.dumps({k: str(v) for k, v in trained.items()})}
        for task, ckpt in trained.items():
            out = "emb" if task == "retriever" else task + ".jsonl"
            main(["predict", "--ckpt_path", ckpt, "--data.manifest", {str(manifest)!r},
                  "--data.image_root", {str(images)!r}, "--out", out, "--no_progress"])
        tags = multimodal.load(trained["tagger"]).predict([{str(images / "broken.jpg")!r}])
        print("API", json.dumps(tags.to_dict("records")))
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same thread count as here: the same float sums
    cmd = [sys.executable, "-c", script]
    proc = subprocess.run(cmd, cwd=there, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for task in ("tagger", "captioner"):
        assert (there / f"{task}.jsonl").read_text() == (here / f"{task}.jsonl").read_text()
    _, a, pa = load_export(there / "emb")
    _, b, pb = load_export(here / "emb")
    np.testing.assert_array_equal(a, b)
    pd.testing.assert_frame_equal(pa, pb)
    api = json.loads(proc.stdout.split("API ", 1)[1])
    assert len(api) == 1 and "broken.jpg" in api[0]["error"]
