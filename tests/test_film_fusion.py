"""A fourth fusion block written once, in one file (``fusion/film.py``), serves every task: tagging and search use it
as a fusion block, captioning wraps it as a prefix conditioning. Each task is trained through ``multimodal fit``
with one override, its checkpoint loaded by ``multimodal.load`` and run.

The block's own contract (shapes, padding, gradients) is held by ``tests/test_fusion.py``, which finds it by itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLE_IMAGES, fit_tiny

import multimodal

FILM = {"class_path": "fusion.film.FiLMFusion", "init_args": {"dim": 32, "layers": 2, "dropout": 0.0}}


@pytest.fixture(scope="module")
def film_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each task's tiny config with FiLM fusion, fitted for two steps on 24 sample products."""
    root = tmp_path_factory.mktemp("film")
    sample = pd.read_csv(SAMPLE_IMAGES.parent / "metadata.csv", dtype=str, keep_default_na=False)
    manifest = root / "products.csv"
    sample.iloc[::20].head(24).to_csv(manifest, index=False)
    override = ["--model.init_args.fusion", json.dumps(FILM)]
    return {
        task: fit_tiny(task, root / task, manifest, SAMPLE_IMAGES, 2, *override)
        for task in ("tagger", "retriever", "captioner")
    }


@pytest.fixture(scope="module")
def products() -> pd.DataFrame:
    """Three sample products to predict: absolute photo paths and titles."""
    sample = pd.read_csv(SAMPLE_IMAGES.parent / "metadata.csv", dtype=str, keep_default_na=False)
    rows = sample.iloc[7::40].head(3)[["id", "image", "title"]].reset_index(drop=True)
    return rows.assign(image=[str(SAMPLE_IMAGES / name) for name in rows["image"]])


def test_film_tagger_trains_loads_and_tags(film_checkpoints: dict[str, Path], products: pd.DataFrame) -> None:
    from fusion.film import FiLMFusion

    tagger = multimodal.load(film_checkpoints["tagger"])
    assert type(tagger.model.fusion) is FiLMFusion and tagger.model.fusion.layers == 2
    out = tagger.predict(products)
    assert out["id"].tolist() == products["id"].tolist()
    for attribute, vocabulary in tagger.classes.items():
        assert set(out[attribute]) <= set(vocabulary)
    # The title reaches the tags through FiLM's (gamma, beta): another title, other probabilities.
    retitled = products.assign(title=products["title"].iloc[::-1].tolist())
    attribute = next(iter(tagger.classes))
    assert not np.allclose(tagger.predict_proba(products)[attribute], tagger.predict_proba(retitled)[attribute])


def test_film_retriever_fuses_products_and_embeds(film_checkpoints: dict[str, Path], products: pd.DataFrame) -> None:
    from fusion.film import FiLMFusion

    retriever = multimodal.load(film_checkpoints["retriever"])
    assert retriever.model.product == "fused" and type(retriever.model.fusion) is FiLMFusion
    vectors = retriever.extract_embedding(products)  # photo + title, fused by FiLM
    queries = retriever.embed_text(products["title"].tolist())
    assert vectors.shape == queries.shape == (3, retriever.dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1])  # products differ


def test_film_captioner_is_conditioned_through_learned_queries(
    film_checkpoints: dict[str, Path], products: pd.DataFrame
) -> None:
    from fusion.block_conditioning import FusionBlockConditioning
    from fusion.film import FiLMFusion

    captioner = multimodal.load(film_checkpoints["captioner"])
    conditioning = captioner.model.conditioning
    assert isinstance(conditioning, FusionBlockConditioning) and type(conditioning.block) is FiLMFusion
    out = captioner.caption(products["image"].tolist(), max_new_tokens=5)
    assert len(out) == 3 and all(isinstance(c, str) and c.strip() for c in out["caption"])
    assert np.isfinite(out["score"]).all()
