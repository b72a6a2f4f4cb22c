"""ProductRetriever: contrastive training lowers the loss; chunked retrieval metrics match brute force."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from torch.nn import functional as F

from multimodal.errors import UserError
from multimodal.lightning_cli import MultimodalCLI
from multimodal.search.metrics import ranks_of_matches, retrieval_scores, scores_from_ranks
from multimodal.search.retriever import ProductRetriever, info_nce

TINY = "configs/retrieval/tiny.yaml"


def tiny_cli(*extra: str) -> MultimodalCLI:
    return MultimodalCLI(args=["--config", TINY, *extra], run=False)


def test_chunked_ranks_equal_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(50, 8, generator=g), dim=-1)
    p = F.normalize(q + 0.8 * torch.randn(50, 8, generator=g), dim=-1)
    full = q @ p.t()
    brute = (full > full.diag().unsqueeze(1)).sum(1)
    for chunk in (1, 7, 64):
        assert torch.equal(ranks_of_matches(q, p, chunk=chunk), brute)
    scores = scores_from_ranks(brute)
    assert scores["recall@1"] == pytest.approx(float((brute == 0).float().mean()))
    assert scores["median_rank"] == float((brute + 1).float().median())


def test_identical_vectors_are_perfect_matches() -> None:
    x = F.normalize(torch.randn(20, 4), dim=-1)
    scores = retrieval_scores(x, x)
    assert scores["t2p_recall@1"] == 1.0 and scores["p2t_median_rank"] == 1.0


def test_info_nce_prefers_aligned_pairs() -> None:
    x = F.normalize(torch.randn(8, 16), dim=-1)
    aligned = info_nce(x, x, torch.tensor(20.0))
    shuffled = info_nce(x, x.roll(1, 0), torch.tensor(20.0))
    assert aligned < shuffled


def test_fused_products_need_a_fusion_block() -> None:
    from encoders.pretrained import MiniLMTextEncoder
    from encoders.timm_encoder import TimmVisionEncoder

    vision = TimmVisionEncoder("test_efficientnet", image_size=64)
    text = MiniLMTextEncoder(
        random_init=True,
        config_overrides={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
    )
    with pytest.raises(UserError, match="needs model.fusion"):
        ProductRetriever(vision, text, product="fused")


def test_training_lowers_the_loss() -> None:
    cli = tiny_cli("--trainer.max_epochs", "8", "--trainer.overfit_batches", "2", "--trainer.limit_val_batches", "0")
    model, dm = cli.model, cli.datamodule
    assert isinstance(model, ProductRetriever)
    dm.attach(model)
    batch = next(iter(dm.loader("train", train=False)))
    model.eval()
    with torch.no_grad():
        before = model.loss(batch)
    cli.trainer.fit(model, dm)
    model.eval()
    with torch.no_grad():
        after = model.loss(batch)
    assert after["contrastive"] < 0.7 * before["contrastive"], (before, after)
    assert after["itm"] < before["itm"]  # the re-ranker learns too
    vectors = model.predict_step(batch, 0)["embeddings"]
    assert vectors.shape == (16, 32)
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(16), atol=1e-5)


def test_zero_shot_tagger_picks_the_nearest_ensembled_prompt() -> None:
    from multimodal.tagging.zero_shot import ZeroShotTagger

    words = ["watch", "shoe", "shirt", "photo", "product", "a", "of"]

    def embed(texts: list[str]) -> torch.Tensor:  # bag of words: a prompt is near the products that share its value
        rows = [[float(w in t.lower().split()) for w in words] for t in texts]
        return F.normalize(torch.tensor(rows) + 1e-6, dim=-1)

    tagger = ZeroShotTagger(embed, {"kind": ["watch", "shoe", "shirt"]}, ["a photo of a {value}", "{value}"])
    products = embed(["watch", "shirt", "shoe", "watch"])
    assert tagger.predict(products) == {"kind": ["watch", "shirt", "shoe", "watch"]}
    assert tagger.scores(products)["kind"].shape == (4, 3)
    with pytest.raises(UserError, match="placeholder"):
        ZeroShotTagger(embed, {"kind": ["watch"]}, "a photo")
