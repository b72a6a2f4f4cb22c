"""``multimodal serve`` on the torch-free runtime: the service and its LitServe workers started with torch,
torchvision, lightning, transformers, timm and open_clip unimportable (``tests/torch_blocked`` on ``PYTHONPATH``),
given ONNX exports of the tiny tagger and captioner and an index built from the retriever's export. Its answers
equal the eager Python API's: tags (scores within 1e-4), greedy captions, top-10 search ids."""

from __future__ import annotations

from pathlib import Path

import httpx
import pandas as pd
import pytest
from conftest import SAMPLE_IMAGES, TORCH_BLOCKED
from test_serve import Service, photo

import multimodal
from multimodal import cli
from multimodal.onnx.export import export_model

FP32 = 1e-4  # |ONNX Runtime - eager| allowed in fp32
QUERY = "black leather watch"


@pytest.fixture(scope="module")
def served(trained: dict[str, Path], sample_df: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory):
    """Exports of the three tiny models, an index of 30 products from the retriever's export, and the service."""
    root = tmp_path_factory.mktemp("lite-serve")
    for task in ("tagger", "retriever", "captioner"):
        export_model(trained[task], root / task, progress=False)
    products = sample_df.iloc[3::37].head(30).reset_index(drop=True)
    products.to_csv(root / "catalogue.csv", index=False)
    cli.main(["export", "--ckpt_path", str(root / "retriever"), "--input", str(root / "catalogue.csv"),
              "--image_root", str(SAMPLE_IMAGES), "--out", str(root / "emb"), "--no_progress"])  # fmt: skip
    cli.main(["index", str(root / "emb"), "--out", str(root / "index")])
    args = ["--tagger", root / "tagger", "--captioner", root / "captioner", "--index", root / "index",
            "--max_batch_size", "4", "--threads", "1"]  # fmt: skip
    svc = Service(args, root / "serve.log", env={"PYTHONPATH": str(TORCH_BLOCKED)})
    yield svc, products
    assert svc.stop() == 0, svc.tail()


def test_serve_without_torch_answers_as_eager(served, trained: dict[str, Path]) -> None:
    svc, products = served
    names = products["image"].head(2).tolist()
    paths = [str(SAMPLE_IMAGES / n) for n in names]
    tagger = multimodal.load(trained["tagger"])
    want = tagger.predict([{"image": paths[:1], "title": "Blue denim shirt"}]).iloc[0]
    got = httpx.post(svc.url + "/tag", files=[("image", photo(names[0]))], data={"title": "Blue denim shirt"},
                     timeout=60).json()  # fmt: skip
    for attribute in tagger.classes:
        assert got[attribute] == want[attribute], got
        assert got[f"{attribute}_score"] == pytest.approx(want[f"{attribute}_score"], abs=FP32)
    captioner = multimodal.load(trained["captioner"])
    for name, path in zip(names, paths, strict=True):
        caption = httpx.post(svc.url + "/caption", files=[("image", photo(name))], timeout=60).json()
        assert caption["caption"] == captioner.caption([{"image": [path]}])["caption"][0], caption
    hits = httpx.get(svc.url + "/search", params={"text": QUERY, "k": 10}, timeout=60).json()["results"]
    retriever = multimodal.load(trained["retriever"])
    scores = retriever.extract_embedding(products.assign(image=[str(SAMPLE_IMAGES / n) for n in products["image"]]))
    ranked = (scores @ retriever.embed_text([QUERY])[0]).argsort()[::-1][:10]
    assert [h["id"] for h in hits] == products["id"].iloc[ranked].tolist()
    rerank = httpx.get(svc.url + "/search", params={"text": QUERY, "rerank": 5}, timeout=60)
    assert rerank.status_code == 400 and "full install" in rerank.json()["detail"], rerank.text
