"""ONNX export and the ONNX Runtime behind the same inference API: parity of every exported graph with eager
PyTorch, the same labels and the same search results on the committed sample, ``--runtime onnx`` end to end
for predict, export and search, int8, and the export folder's refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SAMPLE_IMAGES, SAMPLE_MANIFEST, cli_error, run_cli

import multimodal
from multimodal.errors import UserError
from multimodal.loading import load
from multimodal.onnx.export import export_model
from multimodal.onnx.graphs import example_inputs, graphs_of
from multimodal.onnx.runtime import load_onnx
from multimodal.search.export import load_export

FP32 = 1e-4  # |ONNX Runtime - eager| allowed in fp32


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """``--runtime onnx`` on a checkpoint exports it to this cache, not to the user's."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MULTIMODAL_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def exports(trained: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An ONNX export of each tiny checkpoint: the tagger with int8 graphs and both towers alone."""
    root = tmp_path_factory.mktemp("onnx")
    export_model(trained["tagger"], root / "tagger", "int8", ("vision", "text"), progress=False)
    export_model(trained["retriever"], root / "retriever", progress=False)
    export_model(trained["captioner"], root / "captioner", progress=False)
    return {task: root / task for task in ("tagger", "retriever", "captioner")}


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    """64 committed products with absolute photo paths; one without a title, one without a photo."""
    df = pd.read_csv(SAMPLE_MANIFEST, dtype=str).iloc[::13].head(64).reset_index(drop=True)
    df["image"] = [str(SAMPLE_IMAGES / name) for name in df["image"]]
    df.loc[3, "title"] = None
    df.loc[5, "image"] = None
    return df


# --------------------------------------------------------------------------------------------------- graphs
@pytest.mark.parametrize("task", ["tagger", "retriever", "captioner"])
def test_every_exported_graph_matches_eager(task: str, trained: dict[str, Path], exports: dict[str, Path]) -> None:
    model = load(trained[task]).model
    onnx = load_onnx(exports[task]).model if task != "captioner" else None
    info = json.loads((exports[task] / "model.json").read_text())
    graphs = graphs_of(model, ("vision", "text") if task == "tagger" else ())
    decoder = {"decoder_first", "decoder_step"} if task == "captioner" else set()  # tests/test_onnx_decoding.py
    assert set(info["graphs"]) == {g.name for g in graphs} | decoder
    for graph in graphs:
        assert info["graphs"][graph.name]["max_abs_diff"] < FP32  # measured at export
        args = example_inputs(graph, model, batch=5, seq=11)  # shapes the export never saw
        with torch.no_grad():
            ref = graph.module(*args)
        if onnx is None:
            from multimodal.onnx.runtime import session

            sess = session(exports[task] / info["graphs"][graph.name]["file"])
            out = sess.run(None, {n: a.numpy() for n, a in zip(graph.inputs, args, strict=True)})
        else:
            out = onnx.run_graph(graph.name, **dict(zip(graph.inputs, args, strict=True)))
        assert len(out) == len(ref)
        for r, o in zip(ref, out, strict=True):
            np.testing.assert_allclose(np.asarray(o), r.numpy(), atol=FP32, err_msg=graph.name)


def test_one_modality_graphs_skip_the_other_tower_and_match_the_full_tagger(trained: dict[str, Path]) -> None:
    tagger = load(trained["tagger"]).model
    b, t = 3, 9
    pixels, ids = torch.randn(b, 3, 64, 64), torch.randint(1000, 5000, (b, t))
    mask = torch.ones(b, t, dtype=torch.long)
    yes, no = torch.ones(b, dtype=torch.bool), torch.zeros(b, dtype=torch.bool)
    both = {"pixel_values": pixels, "input_ids": ids, "attention_mask": mask}
    with torch.no_grad():
        photo_only = tagger({**both, "has_image": yes, "has_text": no})
        text_only = tagger({**both, "has_image": no, "has_text": yes})
        for full, alone in (
            (photo_only, tagger({"pixel_values": pixels})),
            (text_only, tagger(dict(list(both.items())[1:]))),
        ):
            for key in full:
                torch.testing.assert_close(full[key], alone[key], atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------- the Python API
def test_tagger_on_onnx_gives_the_eager_probabilities_and_labels(
    trained: dict[str, Path], exports: dict[str, Path], sample: pd.DataFrame
) -> None:
    eager, onnx = multimodal.load(trained["tagger"]), multimodal.load(exports["tagger"])
    p, q = eager.predict_proba(sample), onnx.predict_proba(sample)
    for key in p:
        np.testing.assert_allclose(q[key].to_numpy(), p[key].to_numpy(), atol=FP32)
        assert (q[key].to_numpy().argmax(1) == p[key].to_numpy().argmax(1)).all()
    labels = list(eager.classes)
    assert eager.predict(sample)[labels].equals(onnx.predict(sample)[labels])
    np.testing.assert_allclose(onnx.extract_embedding(sample), eager.extract_embedding(sample), atol=FP32)
    # int8: a valid distribution per attribute (its quality cost is measured in benchmarks/, not asserted)
    int8 = multimodal.load(exports["tagger"], runtime="onnx-int8").predict_proba(sample)
    for key in p:
        np.testing.assert_allclose(int8[key].sum(axis=1), 1.0, atol=1e-4)


def test_the_export_folder_runs_without_its_checkpoint(
    exports: dict[str, Path], sample: pd.DataFrame, tmp_path: Path
) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(exports["tagger"], moved)
    info = json.loads((moved / "model.json").read_text())
    (moved / "model.json").write_text(json.dumps({**info, "checkpoint": str(tmp_path / "gone.ckpt")}))
    out = multimodal.load(moved).predict(sample.head(8))
    assert len(out) == 8 and out["gender"].notna().all()
    assert multimodal.load(moved).model.session("tagger") is not None


def test_retriever_on_onnx_gives_the_eager_vectors(trained: dict[str, Path], sample: pd.DataFrame) -> None:
    eager, onnx = multimodal.load(trained["retriever"]), multimodal.load(trained["retriever"], runtime="onnx")
    texts = ["red summer dress", "black leather watch for men", "shoes"]
    np.testing.assert_allclose(onnx.embed_text(texts), eager.embed_text(texts), atol=FP32)
    photos = sample["image"].dropna().head(4).tolist()
    np.testing.assert_allclose(onnx.embed_images(photos), eager.embed_images(photos), atol=FP32)
    np.testing.assert_allclose(onnx.extract_embedding(sample), eager.extract_embedding(sample), atol=FP32)


# -------------------------------------------------------------------------------------------- the commands
def test_predict_export_and_search_with_runtime_onnx(
    trained: dict[str, Path], exports: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--data.manifest", SAMPLE_MANIFEST, "--data.image_root", SAMPLE_IMAGES, "--no_progress"]
    # predict: the ONNX folder and --runtime onnx on the checkpoint give the eager labels
    rows = {}
    for name, extra in (("torch", [trained["tagger"]]), ("folder", [exports["tagger"]]),
                        ("runtime", [trained["tagger"], "--runtime", "onnx"])):  # fmt: skip
        run_cli(["predict", "--ckpt_path", *extra, *common, "--out", tmp_path / f"{name}.jsonl"], capsys)
        rows[name] = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
    assert len(rows["torch"]) == 842
    for name in ("folder", "runtime"):
        for a, b in zip(rows["torch"], rows[name], strict=True):
            assert {k: v for k, v in a.items() if not k.endswith("_score")} == {
                k: v for k, v in b.items() if not k.endswith("_score")
            }
            assert all(abs(a[k] - b[k]) < FP32 for k in a if k.endswith("_score"))
    # export: the same vectors on both runtimes; the ONNX one records its runtime and links the checkpoint
    for runtime in ("torch", "onnx"):
        run_cli(["export", "--ckpt_path", trained["retriever"], "--runtime", runtime, *common,
                 "--out", tmp_path / f"emb-{runtime}", "--dtype", "float32"], capsys)  # fmt: skip
    (m1, v1, p1), (m2, v2, p2) = (load_export(tmp_path / f"emb-{r}") for r in ("torch", "onnx"))
    assert p1["id"].tolist() == p2["id"].tolist() and len(v1) == 842
    np.testing.assert_allclose(v2, v1, atol=FP32)
    assert m2["runtime"] == "onnx" and m2["checkpoint_sha256"] == m1["checkpoint_sha256"]
    # search: the same top-10 for text queries with the query tower on ONNX Runtime
    run_cli(["index", tmp_path / "emb-torch", "--out", tmp_path / "index"], capsys)
    for text in ("blue jeans", "women handbag", "watch"):
        hits = {}
        for runtime in ("torch", "onnx"):
            out = run_cli(["search", tmp_path / "index", "--text", text, "-k", "10", "--runtime", runtime], capsys)
            hits[runtime] = [json.loads(line) for line in out.strip().splitlines()]
        assert [h["id"] for h in hits["onnx"]] == [h["id"] for h in hits["torch"]]
        assert max(abs(a["score"] - b["score"]) for a, b in zip(hits["onnx"], hits["torch"], strict=True)) < FP32


def test_export_model_cli_and_its_refusals(
    trained: dict[str, Path], exports: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = json.loads(run_cli(["export-model", "--ckpt_path", trained["captioner"], "--out", tmp_path / "cap"], capsys))
    assert out["task"] == "ProductCaptioner" and out["graphs"]["caption_vision"]["max_abs_diff"] < FP32
    # the same checkpoint and options again: reused, not rewritten
    again = json.loads(
        run_cli(["export-model", "--ckpt_path", trained["captioner"], "--out", tmp_path / "cap"], capsys)
    )
    assert again["graphs"] == out["graphs"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert "never overwritten" in cli_error(
        ["export-model", "--ckpt_path", trained["tagger"], "--out", tmp_path / "mine"], capsys
    )
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert "another checkpoint" in cli_error(
        ["export-model", "--ckpt_path", trained["tagger"], "--out", tmp_path / "cap"], capsys
    )
    assert "not found" in cli_error(
        ["export-model", "--ckpt_path", tmp_path / "none.ckpt", "--out", tmp_path / "x"], capsys
    )
    # a captioner's export holds its vision graph; captioning itself runs on torch
    err = cli_error(["predict", "--ckpt_path", tmp_path / "cap", "--data.manifest", SAMPLE_MANIFEST,
                     "--out", tmp_path / "c.jsonl"], capsys)  # fmt: skip
    assert "--runtime torch" in err
    with pytest.raises(UserError, match="no int8 graphs"):
        multimodal.load(exports["retriever"], runtime="onnx-int8")
    with pytest.raises(UserError, match="not a ProductRetriever"):
        load(exports["tagger"], task="multimodal.search.retriever.ProductRetriever")
    # an embedding export made from an export folder whose checkpoint is gone: the queries run on the export (as
    # on the slim install); re-ranking, which needs the checkpoint, is refused in one line
    moved = tmp_path / "moved"
    shutil.copytree(exports["retriever"], moved)
    info = json.loads((moved / "model.json").read_text())
    (moved / "model.json").write_text(json.dumps({**info, "checkpoint": str(tmp_path / "gone.ckpt")}))
    pd.read_csv(SAMPLE_MANIFEST, dtype=str).head(20).to_csv(tmp_path / "twenty.csv", index=False)
    args = ["--data.manifest", tmp_path / "twenty.csv", "--data.image_root", SAMPLE_IMAGES, "--out", tmp_path / "emb"]
    run_cli(["export", "--ckpt_path", moved, *args, "--no_progress"], capsys)
    assert json.loads((tmp_path / "emb" / "export.json").read_text())["onnx_export"] == str(moved.resolve())
    run_cli(["index", tmp_path / "emb", "--out", tmp_path / "index"], capsys)
    hits = run_cli(["search", tmp_path / "index", "--text", "black watch", "-k", "3"], capsys).splitlines()
    assert len(hits) == 3
    err = cli_error(["search", tmp_path / "index", "--text", "black watch", "--rerank", "3"], capsys)
    assert "re-ranker" in err and "export it again from the checkpoint" in err


@pytest.mark.parametrize("family", ["PrefixConditioning", "LateConditioning"])
def test_caption_vision_graph_of_every_conditioning_family(family: str, tmp_path: Path) -> None:
    """The captioner's vision graph ends with what its language model reads: the prefix (early) or the image
    vector (late); cross-attention's states are checked with the trained tiny captioner above."""
    import yaml

    from multimodal.loading import build_model
    from multimodal.onnx.export import export_graph, parity

    config = yaml.safe_load((Path(__file__).parents[1] / "configs" / "captioning" / "tiny.yaml").read_text())
    config["model"]["init_args"]["fusion"] = {"class_path": f"fusion.conditioning.{family}"}
    model = build_model(config["model"], "tiny.yaml").eval()
    (graph,) = graphs_of(model)
    expected = ("prefix", "prefix_mask") if family == "PrefixConditioning" else ("image_vector",)
    assert graph.outputs == ("tokens", "mask", "pooled", *expected)
    export_graph(graph, model, tmp_path / "caption_vision.onnx")
    assert parity(graph, model, tmp_path / "caption_vision.onnx") < FP32


def test_serve_on_onnx_runtime(
    trained: dict[str, Path], exports: dict[str, Path], sample: pd.DataFrame, tmp_path: Path, capsys
) -> None:
    """``multimodal serve --runtime onnx``: /tag from an export folder and /search with the query tower on ONNX
    Runtime answer what the eager Python API and CLI give."""
    import httpx
    from test_serve import Service, photo

    rows = sample.dropna().head(4).reset_index(drop=True)
    catalogue = tmp_path / "catalogue.csv"
    rows.assign(image=[Path(p).name for p in rows["image"]]).to_csv(catalogue, index=False)
    run_cli(["export", "--ckpt_path", trained["retriever"], "--input", catalogue, "--image_root", SAMPLE_IMAGES,
             "--out", tmp_path / "emb"], capsys)  # fmt: skip
    run_cli(["index", tmp_path / "emb", "--out", tmp_path / "index"], capsys)
    svc = Service(["--tagger", exports["tagger"], "--index", tmp_path / "index", "--runtime", "onnx"],
                  tmp_path / "serve.log")  # fmt: skip
    try:
        want = multimodal.load(trained["tagger"]).predict(rows[["image", "title"]].to_dict("records"))
        for i, r in rows.iterrows():
            got = httpx.post(svc.url + "/tag", files={"image": photo(Path(r["image"]).name)},
                             data={"title": r["title"]}, timeout=60)  # fmt: skip
            assert got.status_code == 200, got.text
            for attribute in multimodal.load(exports["tagger"]).classes:
                assert got.json()[attribute] == want[attribute][i]
                assert got.json()[f"{attribute}_score"] == pytest.approx(want[f"{attribute}_score"][i], abs=FP32)
        hits = httpx.get(svc.url + "/search", params={"text": "blue jeans", "k": 3}, timeout=60).json()["results"]
        out = run_cli(["search", tmp_path / "index", "--text", "blue jeans", "-k", "3"], capsys)
        printed = [json.loads(line) for line in out.strip().splitlines()]
        assert [h["id"] for h in hits] == [p["id"] for p in printed]
        np.testing.assert_allclose([h["score"] for h in hits], [p["score"] for p in printed], atol=FP32)
    finally:
        assert svc.stop() == 0, svc.tail()
