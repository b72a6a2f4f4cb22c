"""Consensus reranking of caption candidates: the CIDEr-D scorer agrees with pycocoevalcap's, the choice follows the
neighbours' titles, a captioner fitted with ``model.rerank`` keeps its memory in the checkpoint and reranks from it
(Python API, CLI), and bad settings are one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import SAMPLE_IMAGES, cli_error, fit_tiny, write_manifest

from multimodal.captioning.settings import RerankSettings
from multimodal.errors import UserError


def test_consensus_similarity_is_pycocoevalcaps_cider_d() -> None:
    from pycocoevalcap.cider.cider import Cider

    from multimodal.captioning.consensus import CiderConsensus
    from multimodal.captioning.metrics import normalise

    refs = ["Nike Men Black Running Shoes", "Puma Women White Casual Shoes", "Titan Men Silver Watch",
            "Fastrack Unisex Black Sunglasses", "Nike Men Blue T-shirt", "Lotto Men's Red Flip Flops"]  # fmt: skip
    cands = ["nike men black shoes", "puma women white casual shoes", "titan watch", "black sunglasses",
             "nike men's blue running t-shirt", "red flip flops for men"]  # fmt: skip
    # With the references as the corpus, one candidate against its reference is pycocoevalcap's per-item CIDEr-D.
    _, expected = Cider().compute_score({i: [normalise(r)] for i, r in enumerate(refs)},
                                        {i: [normalise(c)] for i, c in enumerate(cands)})  # fmt: skip
    consensus = CiderConsensus(refs)
    got = [consensus.similarity(c, r) for c, r in zip(cands, refs, strict=True)]
    assert got == pytest.approx(list(expected), rel=1e-9, abs=1e-12)
    assert consensus.similarity("", refs[0]) == 0.0 and consensus.consensus(cands[0], []) == 0.0


def test_choose_follows_the_neighbours_then_the_beam_score() -> None:
    from multimodal.captioning.consensus import CiderConsensus

    corpus = ["nike men black shoes", "puma men black shoes", "nike men black sports shoes", "titan men watch",
              "adidas women white shoes", "fastrack unisex sunglasses"]  # fmt: skip
    consensus = CiderConsensus(corpus)
    neighbours = ["nike men black shoes", "nike men black sports shoes", "puma men black shoes"]
    candidates = ["titan men watch", "nike men black shoes", "adidas women white shoes"]
    assert consensus.choose(candidates, [-0.1, -0.9, -0.2], neighbours) == 1  # the neighbours agree on it
    assert consensus.choose(candidates, [-0.1, -0.9, -0.2], neighbours, weight=1000.0) == 0  # the beam decides
    assert consensus.choose(candidates, [-0.1, -0.9, -0.2], []) == 0  # nothing to agree with: the beam's best
    assert consensus.choose(["", "nike men black shoes"], [-0.1, -0.5], neighbours) == 1  # empty captions lose
    with pytest.raises(ValueError, match="no caption candidates"):
        consensus.choose([], [], neighbours)
    # pick: per item, the choice among its consecutive candidates (here 3 each), with their scores.
    texts, scores = consensus.pick(candidates * 2, [-0.1, -0.9, -0.2] * 2, [neighbours, []])
    assert texts == ["nike men black shoes", "titan men watch"] and scores == [-0.9, -0.1]
    with pytest.raises(ValueError, match="5 candidates and 5 scores for 2 items"):
        consensus.pick(candidates + candidates[:2], [0.0] * 5, [neighbours, []])


@pytest.fixture(scope="module")
def reranking(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A tiny captioner fitted for 2 steps with ``model.rerank`` on 24 sample products: checkpoint, photo paths."""
    root = tmp_path_factory.mktemp("rerank")
    df = pd.read_csv(SAMPLE_IMAGES.parent / "metadata.csv", dtype=str, keep_default_na=False).iloc[::29].head(24)
    write_manifest(df.assign(split="train"), root / "train.csv")
    ckpt = fit_tiny("captioner", root / "fit", root / "train.csv", SAMPLE_IMAGES, 2,
                    "--model.init_args.rerank", "{k: 3, candidates: 4}")  # fmt: skip
    return ckpt, [str(SAMPLE_IMAGES / name) for name in sorted(df["image"])[:5]]


def test_reranking_captioner_keeps_its_memory_and_picks_the_consensus_candidate(
    reranking: tuple[Path, list[str]],
) -> None:
    import multimodal

    ckpt, photos = reranking
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert len(stored["caption_memory"]["titles"]) == 24  # built at fit from the training split, no retrieval
    captioner = multimodal.load(ckpt)
    model = captioner.model
    assert model.rerank == RerankSettings(k=3, candidates=4, weight=0.0) and model.retrieval is None
    options = {"max_new_tokens": 6, "no_repeat_ngram_size": 1}  # varied candidates from an untrained LM
    chosen = captioner.caption(photos, **options)
    # The same photos by hand: 4 beam candidates each, the one with the best mean CIDEr-D with the 3 nearest titles.
    from multimodal.data.images import load_image

    transform = model.image_transform(False)
    pixels = torch.stack([transform(load_image(Path(p))) for p in photos])
    enc = model.text_fn()({"title": [None] * len(photos)})  # the prompt a caption job gives: [bos]
    vision = model.encode_images(pixels)
    beams = model.generate_from_features(vision, enc["prompt_ids"], enc["prompt_mask"], rerank=False, num_beams=4,
                                         num_return_sequences=4, **options)  # fmt: skip
    neighbours = model.memory.neighbours(vision, 3)
    consensus = model.reranker.consensus(model.memory)
    for i, row in enumerate(neighbours):
        candidates, scores = beams.texts[i * 4 : (i + 1) * 4], beams.scores[i * 4 : (i + 1) * 4]
        best = consensus.choose(candidates, scores, [model.memory.titles[r] for r in row])
        assert chosen["caption"][i] == candidates[best]
        assert chosen["score"][i] == pytest.approx(scores[best], abs=1e-5)
    # rerank=False is plain decoding with the model's settings (greedy here); rerank=True the model's settings.
    plain = captioner.caption(photos, rerank=False, **options)
    first = model.generate_from_features(vision, enc["prompt_ids"], enc["prompt_mask"], rerank=False, **options)
    assert plain["caption"].tolist() == first.texts
    assert captioner.caption(photos, rerank=True, **options)["caption"].tolist() == chosen["caption"].tolist()


def test_rerank_from_the_cli_and_its_errors(
    reranking: tuple[Path, list[str]], trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import multimodal
    from multimodal.cli import main

    ckpt, photos = reranking
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, p in enumerate(photos):  # new names: a job's ids that are training ids would not see their own title
        (folder / f"new_{i}.jpg").write_bytes(Path(p).read_bytes())
    runs = {}
    for flag in ("on", "off"):
        out = tmp_path / f"captions_{flag}.jsonl"
        main(["caption", "--ckpt_path", str(ckpt), "--input", str(folder), "--out", str(out), "--max_new_tokens", "6",
              "--no_repeat_ngram_size", "1", "--rerank", flag, "--no_progress"])  # fmt: skip
        runs[flag] = {r["id"]: r["caption"] for r in map(json.loads, out.read_text().splitlines())}
    api = multimodal.load(ckpt)
    for flag, rerank in (("on", True), ("off", False)):
        expected = api.caption(photos, max_new_tokens=6, no_repeat_ngram_size=1, rerank=rerank)["caption"].tolist()
        assert sorted(runs[flag].values()) == sorted(expected)
    # A captioner fitted without rerank or retrieval has no memory: asking for reranking is a one-line error.
    out = tmp_path / "no_memory.jsonl"
    err = cli_error(["caption", "--ckpt_path", trained["captioner"], "--input", folder, "--out", out,
                     "--rerank", "on"], capsys)  # fmt: skip
    assert "no caption memory" in err
    err = cli_error(["caption", "--ckpt_path", ckpt, "--input", folder, "--out", out, "--rerank", "maybe"], capsys)
    assert "--rerank must be on or off" in err
    assert not out.exists()
    with pytest.raises(UserError, match="no caption memory"):
        multimodal.load(trained["captioner"]).caption(photos[:1], rerank=True)
    for bad, match in (({"k": 0}, r"rerank.k=0"), ({"beams": 3}, "keys k, candidates and weight"),
                       ({"weight": -1}, r"rerank.weight=-1"), ("yes", "keys k, candidates and weight")):  # fmt: skip
        with pytest.raises(UserError, match=match):
            RerankSettings.parse(bad)
    assert RerankSettings.parse({"k": 8}) == RerankSettings(k=8, candidates=8, weight=0.0)
    assert RerankSettings.parse(False) is None
