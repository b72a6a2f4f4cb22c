"""docs/runtime.md, run as written: its ``export-model`` lines on the full install (tiny checkpoints of the three
tasks), then its runtime lines and its Python block in a subprocess where torch, torchvision, lightning,
transformers, timm and open_clip cannot be imported (``tests/torch_blocked`` on ``PYTHONPATH``), and its ``serve``
line started the same way (its LitServe workers blocked too). Outputs equal the eager models': labels (scores
within 1e-4), greedy captions, top-10 search ids; the service answers ``/tag``, ``/caption`` and ``/search`` with
the same."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pandas as pd
import pytest
from conftest import ROOT, SAMPLE_IMAGES, TORCH_BLOCKED
from test_serve import Service, photo

import multimodal
from multimodal import cli

FP32 = 1e-4  # |ONNX Runtime - eager| allowed in fp32
DOC = ROOT / "docs" / "runtime.md"

# Runs the runtime block's lines (each search's JSON lines to search-<n>.jsonl), then the Python block.
SCRIPT = """
import contextlib, io, json, shlex, sys
import pandas as pd
from sitecustomize import HEAVY
from multimodal.cli import main
lines, python = json.loads(sys.argv[1]), sys.argv[2]
for n, line in enumerate(lines):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        main(shlex.split(line)[1:])
    if line.split()[1] == "search":
        open(f"search-{n}.jsonl", "w").write(out.getvalue())
scope = {"new_products": pd.read_csv("new.csv", dtype=str)}
exec(python, scope)
json.dump({"tags": scope["tags"].to_dict("records"), "captions": scope["captions"].to_dict("records"),
           "heavy": sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)}, open("python.json", "w"))
"""


def fenced(after: str, language: str = "bash") -> str:
    """The first fenced ``language`` block after the doc's line starting with ``after``."""
    text = DOC.read_text(encoding="utf-8").split(f"\n{after}", 1)[1]
    return text.split(f"```{language}\n", 1)[1].split("```", 1)[0]


def lines(after: str) -> list[str]:
    return [line for line in fenced(after).splitlines() if line.startswith("multimodal ")]


RUNTIME = "On the runtime install"


@pytest.fixture(scope="module")
def workdir(trained: dict[str, Path], sample_df: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files the doc names (checkpoints, new.csv: 10 products, catalog.csv: 30), its training block run."""
    root = tmp_path_factory.mktemp("runtime-doc")
    for task in ("tagger", "retriever", "captioner"):
        shutil.copy(trained[task], root / f"{task}.ckpt")
    absolute = sample_df.assign(image=[str(SAMPLE_IMAGES / n) for n in sample_df["image"]])
    absolute.iloc[5::41].head(10).to_csv(root / "new.csv", index=False)
    absolute.iloc[3::23].head(30).to_csv(root / "catalog.csv", index=False)
    here = Path.cwd()
    os.chdir(root)
    try:
        for line in lines("On the training machine"):
            cli.main(shlex.split(line)[1:])
    finally:
        os.chdir(here)
    return root


@pytest.fixture(scope="module")
def ran(workdir: Path) -> dict:
    """The runtime block (but ``serve``) and the Python block, torch blocked; what the Python block computed."""
    runtime = [line for line in lines(RUNTIME) if line.split()[1] != "serve"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TORCH_BLOCKED)}
    python = DOC.read_text(encoding="utf-8").split("```python\n", 1)[1].split("```", 1)[0]
    argv = [sys.executable, "-c", SCRIPT, json.dumps(runtime), python]
    proc = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((workdir / "python.json").read_text())


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def same_tags(got: list[dict], want: pd.DataFrame, classes: dict) -> None:
    assert [str(r["id"]) for r in got] == want["id"].astype(str).tolist()
    for row, (_, eager) in zip(got, want.iterrows(), strict=True):
        for attribute in classes:
            assert row[attribute] == eager[attribute], (row, attribute)
            assert row[f"{attribute}_score"] == pytest.approx(eager[f"{attribute}_score"], abs=FP32)


def top_ids(retriever: object, catalogue: pd.DataFrame, query: str, k: int = 10) -> list[str]:
    """The eager retriever's top-k ids of ``catalogue`` for a text query."""
    vectors = retriever.extract_embedding(catalogue)  # type: ignore[attr-defined]
    ranked = (vectors @ retriever.embed_text([query])[0]).argsort()[::-1][:k]  # type: ignore[attr-defined]
    return catalogue["id"].astype(str).iloc[ranked].tolist()


def test_the_runtime_commands_and_python_api_give_the_eager_outputs(workdir: Path, ran: dict, trained) -> None:
    assert ran["heavy"] == []
    new = pd.read_csv(workdir / "new.csv", dtype=str)
    tagger = multimodal.load(trained["tagger"])
    eager_tags = tagger.predict(new)
    same_tags(rows(workdir / "tags.jsonl"), eager_tags, tagger.classes)
    same_tags(ran["tags"], eager_tags, tagger.classes)
    eager_captions = multimodal.load(trained["captioner"]).caption(new)["caption"].tolist()
    assert [r["caption"] for r in rows(workdir / "captions.jsonl")] == eager_captions
    assert [r["caption"] for r in ran["captions"]] == eager_captions
    catalogue = pd.read_csv(workdir / "catalog.csv", dtype=str)
    searches = sorted(workdir.glob("search-*.jsonl"))
    assert len(searches) == 2
    want = top_ids(multimodal.load(trained["retriever"]), catalogue, "black leather watch")
    assert [str(r["id"]) for r in rows(searches[0])] == want
    filtered = rows(searches[1])
    assert filtered and {r["gender"] for r in filtered} == {"Men"}


def test_the_runtime_service_answers_as_eager(workdir: Path, ran: dict, trained, tmp_path: Path) -> None:
    (line,) = [line for line in lines(RUNTIME) if line.split()[1] == "serve"]
    env = {"PYTHONPATH": str(TORCH_BLOCKED)}
    svc = Service([*shlex.split(line)[2:], "--threads", "1"], tmp_path / "serve.log", env=env, cwd=workdir)
    try:
        catalogue = pd.read_csv(workdir / "catalog.csv", dtype=str)
        name = Path(catalogue["image"].iloc[0]).name
        tagger = multimodal.load(trained["tagger"])
        want = tagger.predict([{"image": [str(SAMPLE_IMAGES / name)], "title": "Blue denim shirt"}])
        got = httpx.post(svc.url + "/tag", files=[("image", photo(name))], data={"title": "Blue denim shirt"},
                         timeout=60).json()  # fmt: skip
        same_tags([{"id": "0", **got}], want.assign(id="0"), tagger.classes)
        caption = httpx.post(svc.url + "/caption", files=[("image", photo(name))], timeout=60).json()["caption"]
        captioner = multimodal.load(trained["captioner"])
        assert caption == captioner.caption([{"image": [str(SAMPLE_IMAGES / name)]}])["caption"][0]
        hits = httpx.get(svc.url + "/search", params={"text": "black leather watch", "k": 10, "mode": "dense"},
                         timeout=60).json()  # fmt: skip
        want_ids = top_ids(multimodal.load(trained["retriever"]), catalogue, "black leather watch")
        assert [str(h["id"]) for h in hits["results"]] == want_ids
        rerank = httpx.get(svc.url + "/search", params={"text": "black leather watch", "rerank": 5}, timeout=60)
        assert rerank.status_code == 400 and "full install" in rerank.json()["detail"], rerank.text
    finally:
        assert svc.stop() == 0, svc.tail()
