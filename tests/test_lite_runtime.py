"""The torch-free runtime (:mod:`multimodal.lite`): in one subprocess where torch, torchvision, lightning,
transformers, timm and open_clip cannot be imported (a meta-path hook), an ONNX export of a tiny tagger and of a
tiny retriever runs the Python API, ``multimodal predict`` (stopped part way and resumed), ``export``, ``index`` and
``search --text``; the outputs equal eager PyTorch's (labels, scores within 1e-4, top-10 ids) and a checkpoint
given there is refused in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import BLOCK_HEAVY, ROOT, SAMPLE_IMAGES, SAMPLE_MANIFEST

import multimodal
from multimodal.onnx.export import export_model

FP32 = 1e-4  # |ONNX Runtime - eager| allowed in fp32
# imported where installed, not needed: pyarrow's cloudpickle, anyio's sniffio, setuptools' distutils hook (.pth)
OPTIONAL = {"cloudpickle", "sniffio", "setuptools"}
QUERY = "black leather watch"


@pytest.fixture(scope="module")
def exports(trained: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lite")
    export_model(trained["tagger"], root / "tagger", progress=False)
    export_model(trained["retriever"], root / "retriever", progress=False)
    return {task: root / task for task in ("tagger", "retriever")}


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, Path]:
    """24 committed products with absolute photo paths (one without a title, one without a photo, one whose photo
    is not there) and the same rows as a manifest."""
    df = pd.read_csv(SAMPLE_MANIFEST, dtype=str).iloc[::35].head(24).reset_index(drop=True)
    df["image"] = [str(SAMPLE_IMAGES / name) for name in df["image"]]
    df.loc[2, "title"] = None
    df.loc[5, "image"] = None
    df.loc[7, "image"] = str(SAMPLE_IMAGES / "not-there.jpg")
    manifest = tmp_path_factory.mktemp("lite-input") / "new.csv"
    df.to_csv(manifest, index=False)
    return df, manifest


BLOCKED = (
    BLOCK_HEAVY
    + """
import contextlib, io, json
from pathlib import Path
import pandas as pd
import multimodal
from multimodal.cli import main
tagger_dir, retriever_dir, manifest, out, checkpoint = sys.argv[1:6]
df = pd.read_csv(manifest, dtype=str)
tagger, retriever = multimodal.load(tagger_dir, batch_size=8), multimodal.load(retriever_dir, batch_size=8)
result = {"api_rows": tagger.run(df), "api_vectors": retriever.extract_embedding(df).tolist()}
result["api_query"] = retriever.embed_text([sys.argv[6]]).tolist()
args = ["--ckpt_path", tagger_dir, "--data.manifest", manifest, "--batch_size", "4", "--block_size", "8"]
main(["predict", *args, "--out", f"{out}/tags.jsonl", "--no_progress"])
main(["predict", *args, "--out", f"{out}/resumed.jsonl", "--limit_batches", "3", "--no_progress"])
result["stopped_blocks"] = sorted(p.name for p in Path(out, ".resumed.jsonl.job").glob("block-*"))
main(["predict", *args, "--out", f"{out}/resumed.jsonl", "--no_progress"])
vectors = ["--data.manifest", manifest, "--out", f"{out}/vectors", "--dtype", "float32", "--no_progress"]
main(["export", "--ckpt_path", retriever_dir, *vectors])
main(["index", f"{out}/vectors", "--out", f"{out}/index"])
with contextlib.redirect_stdout(io.StringIO()) as hits:
    main(["search", f"{out}/index", "--text", sys.argv[6], "-k", "10"])
result["hits"] = [json.loads(line) for line in hits.getvalue().splitlines()]
with contextlib.redirect_stderr(io.StringIO()) as err, contextlib.suppress(SystemExit):
    main(["predict", "--ckpt_path", checkpoint, "--data.manifest", manifest, "--out", f"{out}/x.jsonl"])
result["checkpoint_error"] = err.getvalue()
with contextlib.redirect_stderr(io.StringIO()) as err, contextlib.suppress(SystemExit):
    main(["fit", "--config", "configs/tagging/tiny.yaml"])
result["fit_error"] = err.getvalue()
from multimodal.serve.app import Settings, build, check  # the service's modules, and its workers' loading
settings = Settings(tagger=tagger_dir, index=f"{out}/index")
check(settings)
for api in build(settings).litapi_connector:
    api.setup("cpu")
result["heavy"] = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
result["modules"] = sorted({m.split(".")[0] for m in sys.modules} - set(sys.stdlib_module_names))
json.dump(result, open(f"{out}/result.json", "w"))
"""
)


@pytest.fixture(scope="module")
def blocked(
    trained: dict[str, Path],
    exports: dict[str, Path],
    sample: tuple[pd.DataFrame, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[dict, Path]:
    """What the subprocess without torch computed, and the folder it wrote in."""
    out = tmp_path_factory.mktemp("lite-out")
    argv = [exports["tagger"], exports["retriever"], sample[1], out, trained["tagger"], QUERY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", BLOCKED, *map(str, argv)], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "result.json").read_text()), out


def _same_rows(rows: list[dict], eager: list[dict]) -> None:
    """Equal ids, labels, tags and errors; scores within FP32."""
    assert [r["id"] for r in rows] == [r["id"] for r in eager]
    for a, b in zip(rows, eager, strict=True):
        assert {k: v for k, v in a.items() if not k.endswith("_score")} == {
            k: v for k, v in b.items() if not k.endswith("_score")
        }
        assert all(abs(a[k] - b[k]) < FP32 for k in b if k.endswith("_score"))


def test_predict_and_the_python_api_give_the_eager_tags_without_torch(
    trained: dict[str, Path], sample: tuple[pd.DataFrame, Path], blocked: tuple[dict, Path]
) -> None:
    result, out = blocked
    assert result["heavy"] == []  # nothing of the training stack was imported
    eager = multimodal.load(trained["tagger"]).run(sample[0])
    assert "error" in eager[7] and "error" not in eager[5]  # a missing photo file; no photo at all
    _same_rows(result["api_rows"], eager)
    tags = [json.loads(line) for line in (out / "tags.jsonl").read_text().splitlines()]
    _same_rows(tags, eager)
    # stopped after 3 batches of 4 (one whole block of 8 written), then resumed: the same file as one run
    assert result["stopped_blocks"] == ["block-000000.jsonl"]
    assert (out / "resumed.jsonl").read_text() == (out / "tags.jsonl").read_text()
    error = result["checkpoint_error"].strip()
    assert "\n" not in error and "is a checkpoint: it needs the full install" in error and "export-model" in error


def test_export_index_and_search_give_the_eager_vectors_and_top_10_without_torch(
    trained: dict[str, Path], exports: dict[str, Path], sample: tuple[pd.DataFrame, Path], blocked: tuple[dict, Path]
) -> None:
    from multimodal.search.export import load_export

    result, out = blocked
    eager = multimodal.load(trained["retriever"])
    vectors = eager.extract_embedding(sample[0])  # (24, E), a NaN row for the unreadable photo
    np.testing.assert_allclose(np.asarray(result["api_vectors"], dtype=np.float32), vectors, atol=FP32)
    query = eager.embed_text([QUERY])
    np.testing.assert_allclose(np.asarray(result["api_query"], dtype=np.float32), query, atol=FP32)
    manifest, stored, products = load_export(out / "vectors")
    kept = [i for i in range(len(vectors)) if not np.isnan(vectors[i]).any()]
    assert products["id"].tolist() == sample[0]["id"].iloc[kept].tolist()
    np.testing.assert_allclose(stored, vectors[kept], atol=FP32)
    assert manifest["onnx_export"] == str(exports["retriever"].resolve()) and manifest["runtime"] == "onnx"
    scores = vectors[kept] @ query[0]
    top = np.argsort(-scores, kind="stable")[:10]
    assert [h["id"] for h in result["hits"]] == products["id"].iloc[top].tolist()
    np.testing.assert_allclose([h["score"] for h in result["hits"]], scores[top], atol=FP32)


def test_the_runtime_install_holds_what_the_runtime_imports_and_no_torch(blocked: tuple[dict, Path]) -> None:
    """``pip install multimodal-products`` (no ``[full]``): its requirements pull in none of the heavy packages
    (resolved over this environment's metadata), and every distribution the torch-free runtime imported above
    (predict, export, index, search, the service's modules and workers' loading) is among them; a training command
    there says in one line that it needs the full install."""
    from importlib.metadata import packages_distributions

    from benchmarks.runtime_env import HEAVY, closure, normal, runtime_requirements

    result, _ = blocked
    runtime = closure(runtime_requirements())
    assert not runtime & HEAVY
    owners = packages_distributions()
    imported = {normal(d) for m in result["modules"] for d in owners.get(m, [])} - {"multimodal-products"}
    assert imported and imported - OPTIONAL <= runtime, imported - runtime
    fit = result["fit_error"].strip()
    assert "\n" not in fit and fit.startswith("error: `multimodal fit` needs the full install") and "[full]" in fit
